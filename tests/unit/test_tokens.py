"""Forged tokens: each breaks exactly the rule it is named after (no network)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import jwt
import pytest
from crosstalk.tokens import Forgery, b64url_decode, forge, public_pem_from_jwk, split
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER, AUDIENCE, KID = "test-issuer", "test-audience", "kid-1"


@pytest.fixture(scope="module")
def platform_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def public_pem(platform_key):
    jwk = json.loads(RSAAlgorithm.to_jwk(platform_key.public_key()))
    return public_pem_from_jwk(jwk)


@pytest.fixture(scope="module")
def genuine(platform_key):
    now = int(time.time())
    claims = {"sub": "user-1", "iat": now, "exp": now + 600, "jti": "j1", "iss": ISSUER, "aud": AUDIENCE}
    return jwt.encode(claims, platform_key, algorithm="RS256", headers={"kid": KID})


def strict_decode(token, platform_key):
    return jwt.decode(
        token,
        platform_key.public_key(),
        algorithms=["RS256"],
        issuer=ISSUER,
        audience=AUDIENCE,
        options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
    )


def test_genuine_token_verifies(genuine, platform_key):
    assert strict_decode(genuine, platform_key)["sub"] == "user-1"


@pytest.mark.parametrize(
    "kind, alg",
    [
        (Forgery.ALG_NONE, "none"),
        (Forgery.ALG_NONE_CAPITALIZED, "None"),
        (Forgery.ALG_NONE_UPPER, "NONE"),
    ],
)
def test_alg_none_has_empty_signature_and_same_subject(genuine, kind, alg):
    token = forge(kind, genuine)
    header, claims, signature = split(token)
    assert header["alg"] == alg
    assert signature == ""
    assert claims["sub"] == "user-1"
    assert token.endswith(".")


def test_signature_stripped_keeps_header_and_payload(genuine):
    token = forge(Forgery.SIGNATURE_STRIPPED, genuine)
    assert token == genuine.rsplit(".", 1)[0] + "."


def test_payload_tampered_keeps_original_signature_but_fails_verification(genuine, platform_key):
    token = forge(Forgery.PAYLOAD_TAMPERED, genuine)
    assert token.split(".")[2] == genuine.split(".")[2]
    assert split(token)[1]["sub"] != "user-1"
    with pytest.raises(jwt.InvalidSignatureError):
        strict_decode(token, platform_key)


@pytest.mark.parametrize(
    "kind, error",
    [
        (Forgery.EXPIRED, jwt.ExpiredSignatureError),
        (Forgery.MISSING_EXP, jwt.MissingRequiredClaimError),
        (Forgery.WRONG_ISSUER, jwt.InvalidIssuerError),
        (Forgery.WRONG_AUDIENCE, jwt.InvalidAudienceError),
    ],
)
def test_claim_forgeries_signed_by_platform_key_break_only_their_rule(genuine, platform_key, kind, error):
    token = forge(kind, genuine, platform_key=platform_key)
    # the signature is valid: only the named claim rule rejects it
    jwt.decode(
        token,
        platform_key.public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_aud": False, "verify_iss": False},
    )
    with pytest.raises(error):
        strict_decode(token, platform_key)


def test_claim_forgeries_without_platform_key_are_signed_by_a_foreign_key(genuine, platform_key):
    token = forge(Forgery.EXPIRED, genuine)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, platform_key.public_key(), algorithms=["RS256"], options={"verify_exp": False})


def test_wrong_signature_keeps_kid_and_fails_signature(genuine, platform_key):
    token = forge(Forgery.WRONG_SIGNATURE, genuine)
    assert split(token)[0]["kid"] == KID
    with pytest.raises(jwt.InvalidSignatureError):
        strict_decode(token, platform_key)


def test_unknown_kid_points_elsewhere(genuine):
    assert split(forge(Forgery.UNKNOWN_KID, genuine))[0]["kid"] not in (KID, None)


def test_hs256_confusion_verifies_with_hmac_over_the_public_pem(genuine, public_pem):
    token = forge(Forgery.HS256_CONFUSION, genuine, public_pem=public_pem)
    header, claims, signature = split(token)
    assert header["alg"] == "HS256"
    signing_input = token.rsplit(".", 1)[0].encode()
    expected = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    assert hmac.compare_digest(expected, b64url_decode(signature))
    assert claims["sub"] == "user-1"


def test_hs256_confusion_uses_the_exact_pem_pyjwt_refuses(public_pem, platform_key):
    spki = platform_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_pem == spki
    with pytest.raises(jwt.InvalidKeyError):
        jwt.encode({"sub": "x"}, public_pem, algorithm="HS256")


def test_hs256_confusion_needs_the_pem(genuine):
    with pytest.raises(ValueError, match="public key PEM"):
        forge(Forgery.HS256_CONFUSION, genuine)


def test_forgeries_get_fresh_jti(genuine):
    assert split(forge(Forgery.ALG_NONE, genuine))[1]["jti"] != "j1"


def test_not_a_jwt_is_a_clear_error():
    with pytest.raises(ValueError, match="three base64url parts"):
        split("not-a-token")


def test_unknown_kind_is_refused(genuine):
    with pytest.raises(ValueError):
        forge("alg_maybe", genuine)

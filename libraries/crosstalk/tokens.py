"""Forged access tokens for security tests, built from a genuine one.

Each forgery breaks exactly one rule a strict verifier must enforce, so a
platform that accepts it has exactly that bug.  ``hs256_confusion`` is built by
hand with ``hmac`` because PyJWT >= 2.4 refuses a PEM public key as an HMAC
secret (CVE-2022-29217) - which is exactly the key a confused verifier uses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from enum import Enum
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class Forgery(Enum):
    """The kinds of forged token (each one must be refused with 401)."""

    ALG_NONE = "alg_none"  # header alg "none", empty signature
    ALG_NONE_CAPITALIZED = "alg_none_capitalized"  # header alg "None": case-sensitive checks miss it
    ALG_NONE_UPPER = "alg_none_upper"  # header alg "NONE"
    SIGNATURE_STRIPPED = "signature_stripped"  # RS256 header, empty signature
    PAYLOAD_TAMPERED = "payload_tampered"  # sub changed, original signature kept
    EXPIRED = "expired"  # exp in the past
    MISSING_EXP = "missing_exp"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    UNKNOWN_KID = "unknown_kid"
    WRONG_SIGNATURE = "wrong_signature"  # signed with another RSA key, same kid
    HS256_CONFUSION = "hs256_confusion"  # HS256 with the public key PEM as HMAC secret


# signed with the platform's own key, these break one claim rule only
CLAIM_FORGERIES = frozenset(
    {Forgery.EXPIRED, Forgery.MISSING_EXP, Forgery.WRONG_ISSUER, Forgery.WRONG_AUDIENCE}
)
UNSIGNED_ALGS = {
    Forgery.ALG_NONE: "none",
    Forgery.ALG_NONE_CAPITALIZED: "None",
    Forgery.ALG_NONE_UPPER: "NONE",
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _json_part(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(header, claims, signature part) of a compact JWT, without verifying anything."""
    try:
        header_part, payload_part, signature = token.split(".")
        return json.loads(b64url_decode(header_part)), json.loads(b64url_decode(payload_part)), signature
    except ValueError:
        raise ValueError("Not a compact JWT (expected three base64url parts separated by dots).") from None


@lru_cache(maxsize=1)
def other_private_key() -> rsa.RSAPrivateKey:
    """An RSA key the platform has never seen (made once per process)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem_from_jwk(jwk: dict[str, Any]) -> bytes:
    """SubjectPublicKeyInfo PEM of an RSA JWK - the bytes a confused verifier uses as HMAC secret."""
    public_key = RSAAlgorithm.from_jwk(json.dumps(jwk))
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_json_part(header)}.{_json_part(claims)}."


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """HS256 token signed with any bytes as secret (PyJWT would refuse a PEM)."""
    signing_input = f"{_json_part({**header, 'alg': 'HS256', 'typ': 'JWT'})}.{_json_part(claims)}"
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def _rs256(claims: dict[str, Any], kid: str | None, key: Any = None) -> str:
    headers = {"kid": kid} if kid else {}
    return jwt.encode(claims, key or other_private_key(), algorithm="RS256", headers=headers)


def load_private_key(pem: bytes) -> Any:
    return serialization.load_pem_private_key(pem, password=None)


def forge(
    kind: Forgery | str, genuine: str, public_pem: bytes | None = None, platform_key: Any = None
) -> str:
    """A forged variant of the ``genuine`` access token.

    The claim-rule forgeries (expired, missing exp, wrong iss/aud) break exactly
    one rule when ``platform_key`` (the platform's own RSA private key, known
    for the reference platform) is given; without it they are signed with a
    key the platform does not know, so a platform accepting them also skips
    the signature check.  ``public_pem`` is needed for ``hs256_confusion``
    (see :func:`public_pem_from_jwk`).
    """
    kind = Forgery(kind)
    header, claims, signature = split(genuine)
    kid = header.get("kid")
    now = int(time.time())
    fresh = {**claims, "jti": uuid.uuid4().hex}
    if kind in UNSIGNED_ALGS:
        return unsigned({"alg": UNSIGNED_ALGS[kind], "typ": "JWT"}, fresh)
    if kind is Forgery.SIGNATURE_STRIPPED:
        return genuine.rsplit(".", 1)[0] + "."
    if kind is Forgery.PAYLOAD_TAMPERED:
        tampered = {**claims, "sub": str(uuid.uuid4())}
        return f"{genuine.split('.')[0]}.{_json_part(tampered)}.{signature}"
    if kind is Forgery.EXPIRED:
        return _rs256({**fresh, "iat": now - 7200, "exp": now - 3600}, kid, platform_key)
    if kind is Forgery.MISSING_EXP:
        return _rs256({k: v for k, v in fresh.items() if k != "exp"}, kid, platform_key)
    if kind is Forgery.WRONG_ISSUER:
        return _rs256({**fresh, "iss": "https://attacker.invalid"}, kid, platform_key)
    if kind is Forgery.WRONG_AUDIENCE:
        return _rs256({**fresh, "aud": "some-other-service"}, kid, platform_key)
    if kind is Forgery.UNKNOWN_KID:
        return _rs256(fresh, "kid-that-points-elsewhere")
    if kind is Forgery.WRONG_SIGNATURE:
        return _rs256(fresh, kid)
    if kind is Forgery.HS256_CONFUSION:
        if public_pem is None:
            raise ValueError("hs256_confusion needs the platform's public key PEM (from its JWKS).")
        return hs256({"kid": kid} if kid else {}, fresh, public_pem)
    raise ValueError(f"Unknown forgery {kind}.")  # pragma: no cover - Enum() rejects it first


def expired_genuine_claims(claims: dict[str, Any]) -> bool:
    """True when ``exp`` lies in the past."""
    return int(claims.get("exp", 0)) < time.time()

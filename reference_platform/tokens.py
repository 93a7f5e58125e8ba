"""RS256 access tokens: issuing (auth service) and verifying (both services).

Verification is strict by design: only RS256, a known ``kid``, a valid signature,
and ``exp``, ``iat``, ``sub``, ``jti``, ``iss``, ``aud`` all present and right.
The ``jwt_*`` fault switches loosen exactly one of those rules each.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from . import faults

REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "iss", "aud"]


class TokenError(Exception):
    """The token is not acceptable; the message says why (never echoes the token)."""


def generate_private_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def kid_for(public_pem: bytes) -> str:
    """Key id derived from the public key, so a restarted platform with the same key keeps its kid."""
    return hashlib.sha256(public_pem).hexdigest()[:16]


@dataclass
class VerificationKey:
    kid: str
    public_key: object  # cryptography RSA public key
    public_pem: bytes


def keys_from_jwks(jwks: dict) -> dict[str, VerificationKey]:
    keys = {}
    for jwk in jwks.get("keys", []):
        public_key = RSAAlgorithm.from_jwk(json.dumps(jwk))
        pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        keys[jwk["kid"]] = VerificationKey(jwk["kid"], public_key, pem)
    return keys


class Signer:
    def __init__(self, private_pem: bytes, issuer: str, audience: str, ttl: int):
        self.private_key = serialization.load_pem_private_key(private_pem, password=None)
        self.public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = kid_for(self.public_pem)
        self.issuer, self.audience, self.ttl = issuer, audience, ttl

    def jwks(self) -> dict:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def verification_keys(self) -> dict[str, VerificationKey]:
        return {self.kid: VerificationKey(self.kid, self.private_key.public_key(), self.public_pem)}

    def issue(self, user_id: str, session_id: str | None = None) -> tuple[str, dict]:
        """A signed access token; ``session_id`` becomes the ``sid`` claim (the refresh-token family
        of the login it belongs to, so logout can end the whole session)."""
        now = int(time.time())
        claims = {
            "sub": user_id, "iat": now, "exp": now + self.ttl, "jti": uuid.uuid4().hex,
            "iss": self.issuer, "aud": self.audience,
        }
        if session_id is not None:
            claims["sid"] = session_id
        token = jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})
        return token, claims


class Verifier:
    def __init__(self, keys: dict[str, VerificationKey], issuer: str, audience: str):
        self.keys, self.issuer, self.audience = keys, issuer, audience

    def verify(self, token: str) -> dict:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        alg = str(header.get("alg", ""))
        if alg.lower() == "none":
            if faults.on("jwt_alg_none"):
                return self._claims_unverified(token)
            raise TokenError("alg none is not accepted")
        if alg == "HS256" and faults.on("jwt_hs256_confusion"):
            return self._verify_hs256_with_public_pem(token, header)
        if alg != "RS256":
            raise TokenError(f"alg {alg!r} is not accepted, only RS256")
        key = self.keys.get(header.get("kid"))
        if key is None:
            raise TokenError("unknown kid")
        try:
            return jwt.decode(
                token, key.public_key, algorithms=["RS256"], audience=self.audience, issuer=self.issuer,
                options={"require": REQUIRED_CLAIMS, "verify_exp": not faults.on("jwt_accept_expired")},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from None

    def _claims_unverified(self, token: str) -> dict:
        try:
            return json.loads(_b64url_decode(token.split(".")[1]))
        except (ValueError, IndexError) as exc:
            raise TokenError(f"malformed token: {exc}") from None

    def _verify_hs256_with_public_pem(self, token: str, header: dict) -> dict:
        # The classic confusion bug: "the key" is used with whatever alg the token names.
        # PyJWT refuses a PEM as HMAC secret, so the buggy code does the HMAC itself.
        key = self.keys.get(header.get("kid")) or next(iter(self.keys.values()))
        signing_input, _, signature = token.rpartition(".")
        for pem in (key.public_pem, key.public_pem.strip()):
            expected = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
            if hmac.compare_digest(expected, _b64url_decode(signature)):
                return self._claims_unverified(token)
        raise TokenError("bad HS256 signature")

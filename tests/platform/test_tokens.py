"""Every kind of bad access token is refused on REST and on the WebSocket handshake."""

from __future__ import annotations

import json
import time

import pytest
import requests
from chatclient import (
    TIMEOUT,
    b64url,
    generate_key,
    handshake_status,
    hs256_with_public_key,
    register_and_login,
    sign_rs256,
    unsigned,
    valid_claims,
)


@pytest.fixture(scope="module")
def user(platform):
    return register_and_login(platform, "tokens")


def forge(platform, user, kind: str) -> str:
    now = int(time.time())
    claims = valid_claims(platform, user)
    if kind in ("none", "None", "NONE", "nOnE"):
        return unsigned(claims, kind)
    if kind == "hs256_public_key":
        return hs256_with_public_key(platform, claims)
    if kind == "bad_signature":
        head, payload, signature = sign_rs256(platform, claims).split(".")
        return f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    if kind == "stripped_signature":
        return sign_rs256(platform, claims).rsplit(".", 1)[0] + "."
    if kind == "tampered_payload":
        head, _, signature = sign_rs256(platform, claims).split(".")
        other = valid_claims(platform, user, sub="00000000-0000-0000-0000-000000000001")
        return f"{head}.{b64url(json.dumps(other).encode())}.{signature}"
    if kind == "other_key":
        return sign_rs256(platform, claims, key_pem=generate_key())
    if kind == "expired":
        return sign_rs256(platform, valid_claims(platform, user, iat=now - 600, exp=now - 300))
    if kind == "missing_exp":
        return sign_rs256(platform, valid_claims(platform, user, exp=None))
    if kind == "wrong_iss":
        return sign_rs256(platform, valid_claims(platform, user, iss="https://evil.example"))
    if kind == "wrong_aud":
        return sign_rs256(platform, valid_claims(platform, user, aud="some-other-api"))
    if kind == "unknown_kid":
        return sign_rs256(platform, claims, kid="not-a-known-kid")
    if kind == "garbage":
        return "not.a.jwt"
    raise ValueError(kind)


BAD_KINDS = ["none", "None", "NONE", "nOnE", "hs256_public_key", "bad_signature", "stripped_signature",
             "tampered_payload", "other_key", "expired", "missing_exp", "wrong_iss", "wrong_aud",
             "unknown_kid", "garbage"]


def test_a_token_forged_with_the_real_key_is_accepted(platform, user):
    # Proves the forging helpers build otherwise-valid tokens, so each refusal below is about one defect.
    token = sign_rs256(platform, valid_claims(platform, user))
    reply = requests.get(f"{platform.backend_url}/threads", headers={"Authorization": f"Bearer {token}"},
                         timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert handshake_status(platform, token) == 101


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_token_refused_on_rest(platform, user, kind):
    token = forge(platform, user, kind)
    for url in (f"{platform.backend_url}/threads", f"{platform.auth_url}/auth/me"):
        reply = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
        assert reply.status_code == 401, f"{kind} token accepted by {url}: {reply.status_code} {reply.text}"


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_token_refused_on_websocket_handshake(platform, user, kind):
    assert handshake_status(platform, forge(platform, user, kind)) == 401


def test_missing_token_refused(platform):
    assert requests.get(f"{platform.backend_url}/threads", timeout=TIMEOUT).status_code == 401
    assert handshake_status(platform, None) == 401
    assert requests.get(f"{platform.backend_url}/threads", headers={"Authorization": "Basic abc"},
                        timeout=TIMEOUT).status_code == 401

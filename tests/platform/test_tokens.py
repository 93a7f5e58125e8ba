"""Every kind of bad access token is refused on REST and on the WebSocket handshake."""

from __future__ import annotations

import pytest
import requests

from tests.platform.chatclient import (
    TIMEOUT,
    forge_token,
    handshake_status,
    register_and_login,
    sign_rs256,
    valid_claims,
)


@pytest.fixture(scope="module")
def user(platform):
    return register_and_login(platform, "tokens")


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
    token = forge_token(platform, user, kind)
    for url in (f"{platform.backend_url}/threads", f"{platform.auth_url}/auth/me"):
        reply = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
        assert reply.status_code == 401, f"{kind} token accepted by {url}: {reply.status_code} {reply.text}"


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_token_refused_on_websocket_handshake(platform, user, kind):
    assert handshake_status(platform, forge_token(platform, user, kind)) == 401


def test_missing_token_refused(platform):
    assert requests.get(f"{platform.backend_url}/threads", timeout=TIMEOUT).status_code == 401
    assert handshake_status(platform, None) == 401
    assert requests.get(f"{platform.backend_url}/threads", headers={"Authorization": "Basic abc"},
                        timeout=TIMEOUT).status_code == 401

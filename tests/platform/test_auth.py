"""Auth contract: register, login, refresh rotation with reuse detection, logout revocation, JWKS."""

from __future__ import annotations

import uuid

import jwt
import pytest
import requests

from tests.platform.chatclient import (
    PASSWORD,
    TIMEOUT,
    chat,
    close_code,
    handshake_status,
    open_socket,
    register_and_login,
)


def post(platform, path: str, body: dict, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{platform.auth_url}{path}", json=body, headers=headers, timeout=TIMEOUT)


def test_register_returns_user_id_and_refuses_duplicates(platform):
    email = f"dup-{uuid.uuid4().hex[:8]}@example.test"
    first = post(platform, "/auth/register", {"email": email, "password": PASSWORD})
    assert first.status_code == 201, first.text
    uuid.UUID(first.json()["user_id"])
    again = post(platform, "/auth/register", {"email": email, "password": PASSWORD})
    assert again.status_code == 409, again.text


@pytest.mark.parametrize("email,password", [
    ("not-an-email", PASSWORD), ("short@example.test", "1234567"), (None, PASSWORD), ("x@example.test", None),
])
def test_register_refuses_bad_email_or_short_password(platform, email, password):
    reply = post(platform, "/auth/register", {"email": email, "password": password})
    assert reply.status_code == 422, reply.text


def test_login_returns_token_pair_and_me_names_the_user(platform):
    user = register_and_login(platform, "me")
    claims = jwt.decode(user.access_token, options={"verify_signature": False})
    header = jwt.get_unverified_header(user.access_token)
    assert header["alg"] == "RS256" and header["kid"]
    assert claims["sub"] == user.user_id
    assert {"iat", "exp", "jti", "iss", "aud"} <= set(claims)
    me = requests.get(f"{platform.auth_url}/auth/me", headers=user.headers, timeout=TIMEOUT)
    assert me.status_code == 200 and me.json() == {"user_id": user.user_id, "email": user.email}


def test_login_failure_body_is_identical_for_unknown_email_and_wrong_password(platform):
    user = register_and_login(platform, "wrongpw")
    wrong_password = post(platform, "/auth/login", {"email": user.email, "password": "wrong password"})
    unknown_email = post(platform, "/auth/login", {"email": f"nobody-{uuid.uuid4().hex}@example.test",
                                                   "password": PASSWORD})
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.content == unknown_email.content


def test_jwks_publishes_the_signing_key(platform):
    user = register_and_login(platform, "jwks")
    jwks = requests.get(f"{platform.auth_url}/.well-known/jwks.json", timeout=TIMEOUT).json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(user.access_token)["kid"]]
    claims = jwt.decode(user.access_token, key.key, algorithms=["RS256"], audience=platform.state["audience"],
                        issuer=platform.state["issuer"])
    assert claims["sub"] == user.user_id


def test_refresh_is_single_use_and_reuse_revokes_the_whole_family(platform):
    user = register_and_login(platform, "refresh")
    first = post(platform, "/auth/refresh", {"refresh_token": user.refresh_token})
    assert first.status_code == 200, first.text
    pair = first.json()
    assert pair["token_type"] == "bearer" and pair["refresh_token"] != user.refresh_token
    assert requests.get(f"{platform.backend_url}/threads", timeout=TIMEOUT,
                        headers={"Authorization": f"Bearer {pair['access_token']}"}).status_code == 200
    reuse = post(platform, "/auth/refresh", {"refresh_token": user.refresh_token})
    assert reuse.status_code == 401, "a used refresh token was accepted again"
    after_reuse = post(platform, "/auth/refresh", {"refresh_token": pair["refresh_token"]})
    assert after_reuse.status_code == 401, "reuse detection did not revoke the newer refresh token"


def test_refresh_refuses_garbage(platform):
    assert post(platform, "/auth/refresh", {"refresh_token": "nope"}).status_code == 401
    assert post(platform, "/auth/refresh", {}).status_code == 401


def test_logout_revokes_the_token_on_rest_handshake_and_open_sockets(platform):
    user = register_and_login(platform, "logout")
    assert chat(platform, user, "hello before logout")[-1]["type"] == "agent_completed"
    with open_socket(platform, user.access_token) as ws:
        reply = post(platform, "/auth/logout", {}, token=user.access_token)
        assert reply.status_code == 204, reply.text
        assert close_code(ws) == 4401
    for url in (f"{platform.backend_url}/threads", f"{platform.auth_url}/auth/me"):
        assert requests.get(url, headers=user.headers, timeout=TIMEOUT).status_code == 401, url
    assert handshake_status(platform, user.access_token) == 401


def test_logout_ends_the_session_but_not_the_users_other_logins(platform):
    user = register_and_login(platform, "session")
    other_login = post(platform, "/auth/login", {"email": user.email, "password": PASSWORD}).json()
    rotated = post(platform, "/auth/refresh", {"refresh_token": user.refresh_token})
    assert rotated.status_code == 200, rotated.text
    pair = rotated.json()
    assert jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"] == \
        jwt.decode(user.access_token, options={"verify_signature": False})["sid"], "refresh left the session"
    assert post(platform, "/auth/logout", {}, token=pair["access_token"]).status_code == 204
    after = post(platform, "/auth/refresh", {"refresh_token": pair["refresh_token"]})
    assert after.status_code == 401, f"refresh after logout answered {after.status_code}: session alive"
    other = post(platform, "/auth/refresh", {"refresh_token": other_login["refresh_token"]})
    assert other.status_code == 200, f"logout ended another login of the same user: {other.status_code}"


def test_logout_needs_a_token(platform):
    assert post(platform, "/auth/logout", {}).status_code == 401

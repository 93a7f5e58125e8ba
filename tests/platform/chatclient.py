"""A plain client of the platform contract for the platform tests: requests + websockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass

import jwt
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

PASSWORD = "correct horse battery"
TIMEOUT = 10.0
TERMINAL = {"agent_completed", "agent_error"}


@dataclass
class User:
    email: str
    user_id: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.access_token}"}


def register_and_login(platform, label: str = "user") -> User:
    email = f"{label}-{uuid.uuid4().hex[:10]}@example.test"
    reply = requests.post(f"{platform.auth_url}/auth/register", json={"email": email, "password": PASSWORD},
                          timeout=TIMEOUT)
    assert reply.status_code == 201, f"register {email}: {reply.status_code} {reply.text}"
    user_id = reply.json()["user_id"]
    reply = requests.post(f"{platform.auth_url}/auth/login", json={"email": email, "password": PASSWORD},
                          timeout=TIMEOUT)
    assert reply.status_code == 200, f"login {email}: {reply.status_code} {reply.text}"
    body = reply.json()
    return User(email, user_id, body["access_token"], body["refresh_token"])


def open_socket(platform, token: str | None, origin: str | None = None) -> ClientConnection:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return connect(platform.ws_url, additional_headers=headers, origin=origin, open_timeout=TIMEOUT,
                   compression=None)


def handshake_status(platform, token: str | None, origin: str | None = None) -> int:
    """HTTP status of a refused handshake, 101 when it was accepted (the socket is closed again)."""
    try:
        with open_socket(platform, token, origin):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def send_message(ws: ClientConnection, content: str, thread_id: str | None = None,
                 client_message_id: str | None = None) -> str:
    cmid = client_message_id or uuid.uuid4().hex
    frame = {"type": "user_message", "content": content, "client_message_id": cmid}
    if thread_id:
        frame["thread_id"] = thread_id
    ws.send(json.dumps(frame))
    return cmid


def receive(ws: ClientConnection, what: str, timeout: float = TIMEOUT) -> dict:
    try:
        return json.loads(ws.recv(timeout=timeout))
    except TimeoutError:
        raise AssertionError(f"no frame within {timeout:.0f} s while waiting for {what}") from None


def collect_run(ws: ClientConnection, client_message_id: str, timeout: float = TIMEOUT) -> list[dict]:
    """Frames for one client_message_id until its terminal event or error frame (others are dropped)."""
    frames, deadline = [], time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        seen = [f["type"] for f in frames]
        if left <= 0:
            raise AssertionError(f"run {client_message_id} did not finish within {timeout:.0f} s; got {seen}")
        frame = receive(ws, f"the end of run {client_message_id} (so far {seen})", left)
        if frame.get("client_message_id") != client_message_id:
            continue
        frames.append(frame)
        if frame["type"] in TERMINAL or frame["type"] == "error":
            return frames


def collect_runs(ws: ClientConnection, client_message_ids: list[str], timeout: float = TIMEOUT) -> dict:
    runs = {cmid: [] for cmid in client_message_ids}
    open_runs, deadline = set(client_message_ids), time.monotonic() + timeout
    while open_runs:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"runs {sorted(open_runs)} did not finish within {timeout:.0f} s")
        frame = receive(ws, f"the end of runs {sorted(open_runs)}", left)
        cmid = frame.get("client_message_id")
        if cmid in runs:
            runs[cmid].append(frame)
            if frame["type"] in TERMINAL or frame["type"] == "error":
                open_runs.discard(cmid)
    return runs


def chat(platform, user: User, content: str, thread_id: str | None = None) -> list[dict]:
    with open_socket(platform, user.access_token) as ws:
        return collect_run(ws, send_message(ws, content, thread_id))


def close_code(ws: ClientConnection, timeout: float = TIMEOUT) -> int | None:
    """Wait until the server closes the socket; its close code."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=deadline - time.monotonic())
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        pass
    raise AssertionError(f"the server did not close the socket within {timeout:.0f} s")


# ------------------------------------------------------------------ forged tokens
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def valid_claims(platform, user: User, **changes) -> dict:
    now = int(time.time())
    claims = {"sub": user.user_id, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex,
              "iss": platform.state["issuer"], "aud": platform.state["audience"]}
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def kid_of(platform) -> str:
    jwks = requests.get(f"{platform.auth_url}/.well-known/jwks.json", timeout=TIMEOUT).json()
    return jwks["keys"][0]["kid"]


def generate_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def sign_rs256(platform, claims: dict, kid: str | None = None, key_pem: bytes | None = None) -> str:
    return jwt.encode(claims, key_pem or platform.private_key_pem, algorithm="RS256",
                      headers={"kid": kid or kid_of(platform)})


def unsigned(claims: dict, alg: str) -> str:
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def hs256_with_public_key(platform, claims: dict) -> str:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(platform.private_key_pem, password=None)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid_of(platform)}).encode())
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def forge_token(platform, user, kind: str) -> str:  # noqa: C901 - one flat table of forgery kinds
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



"""Conformance rules of the platform contract, each checked over real HTTP and WebSocket connections.

Every rule has the id used in ``reference_platform/README.md`` (``AUTH-1`` ...), a
level (MUST or SHOULD) and a check that returns evidence or raises
:class:`RuleBroken`.  Every JSON answer is also validated against
``docs/contract/openapi.yaml`` and every frame against ``docs/contract/asyncapi.yaml``,
so a rule fails when the platform answers with the right status but the wrong shape.

Example::

    results = run_rules(Target(auth_url, backend_url, ws_url, prefix="ct-"), "auth")
    [r for r in results if not r.ok]
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from .connection import ConnectionRefused, RunHandle, UserConnection
from .contract import FrameContract, describe_error, openapi_validator
from .engine import get_engine
from .errors import CrosstalkError
from .httpretry import pooled_session
from .model import TestUser, Tokens
from .secrets import mask_body, mask_text

TIMEOUT = 10.0
PASSWORD = "Conformance-pw-1"
FOREIGN_ORIGIN = "https://evil.example"


class RuleBroken(CrosstalkError):
    """The platform does not meet a rule; the message is the evidence."""


@dataclass
class Target:
    auth_url: str
    backend_url: str
    ws_url: str
    prefix: str = "ct-"
    frames: FrameContract | None = None
    users: list[dict] = field(default_factory=list)
    # called with each user created (email, password, user_id, tokens): the run's cleanup ledger
    on_user: Callable[[Any], None] | None = None
    # the keep-alive session of every REST call (CrosstalkAuth's kind: a stale pooled connection retried once)
    http: requests.Session = field(default_factory=lambda: pooled_session(pool_maxsize=4), repr=False)

    def __post_init__(self) -> None:
        self.auth_url = self.auth_url.rstrip("/")
        self.backend_url = self.backend_url.rstrip("/")


@dataclass
class Rule:
    rule_id: str
    level: str  # MUST or SHOULD
    text: str
    check: Callable[[Target, dict], str]


@dataclass
class Result:
    rule: Rule
    ok: bool
    evidence: str
    seconds: float


# ---------------------------------------------------------------------- helpers
def _conform(reply: requests.Response, path: str, method: str, expected: int | tuple[int, ...]) -> Any:
    """The JSON body after checking status and shape against openapi.yaml; RuleBroken otherwise."""
    statuses = (expected,) if isinstance(expected, int) else expected
    what = f"{method.upper()} {path}"
    if reply.status_code not in statuses:
        raise RuleBroken(
            f"{what} answered HTTP {reply.status_code}, expected "
            f"{' or '.join(map(str, statuses))}: {mask_body(reply.text)[:200]}"
        )
    validator = openapi_validator(path, method, str(reply.status_code))
    if validator is None:
        return None
    try:
        body = reply.json()
    except ValueError:
        raise RuleBroken(
            f"{what} answered {reply.status_code} with a body that is not JSON: "
            f"{mask_text(reply.text)[:120]!r}"
        ) from None
    errors = sorted(validator.iter_errors(body), key=lambda e: str(list(e.absolute_path)))
    if errors:
        raise RuleBroken(
            f"{what} -> {reply.status_code}: the body breaks openapi.yaml at "
            f"{'; '.join(describe_error(e) for e in errors[:3])}"
        )
    return body


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _send(
    target: Target, method: str, path: str, token: str | None = None, body: Any = None, **ids: str
) -> requests.Response:
    """``method path`` (``{thread_id}`` filled from ``ids``) on the service that serves it: ``/auth``
    and ``/.well-known`` on the auth service, everything else on the backend."""
    base = target.auth_url if path.startswith(("/auth", "/.well-known")) else target.backend_url
    return target.http.request(method, base + path.format(**ids), json=body,
                               headers=_bearer(token) if token else {}, timeout=TIMEOUT)


def _call(
    target: Target, method: str, path: str, expected: int, token: str | None = None, body: Any = None,
    **ids: str,
) -> Any:
    """`_send`, then `_conform`: the JSON body after checking status and shape; RuleBroken otherwise."""
    return _conform(_send(target, method, path, token, body, **ids), path, method, expected)


def new_user(target: Target, label: str) -> dict:
    email = f"{target.prefix}conf-{label}-{uuid.uuid4().hex[:8]}@example.test"
    body = _call(target, "post", "/auth/register", 201, body={"email": email, "password": PASSWORD})
    tokens = _call(target, "post", "/auth/login", 200, body={"email": email, "password": PASSWORD})
    who = TestUser(f"conformance-{label}", email, PASSWORD, f"CANARY-conf-{label}-{uuid.uuid4().hex[:8]}",
                   user_id=str(body["user_id"]),
                   tokens=Tokens(tokens["access_token"], tokens["refresh_token"]))
    user = {"email": email, "user_id": body["user_id"], **tokens, "who": who}
    target.users.append(user)
    if target.on_user is not None:
        target.on_user(who)
    return user


def _user(target: Target, state: dict, key: str = "alice") -> dict:
    if key not in state:
        state[key] = new_user(target, key)
    return state[key]


def _on_engine(coro: Coroutine[Any, Any, Any], seconds: float = TIMEOUT) -> Any:
    """Run a socket coroutine on the one engine; a failed wait (AssertionError) is a broken rule."""
    try:
        return get_engine().run(coro, seconds + 5)
    except (RuleBroken, ConnectionRefused):
        raise
    except AssertionError as exc:
        raise RuleBroken(str(exc)) from None


@contextlib.contextmanager
def _socket(target: Target, user: dict, origin: str | None = None, with_token: bool = True,
            ) -> Iterator[UserConnection]:
    """A `UserConnection` of ``user`` (with its access token unless ``with_token`` is false), every received
    frame checked against the AsyncAPI contract; ConnectionRefused when the handshake is refused."""
    connection = UserConnection(user["who"], f"{user['who'].label}#conformance", target.ws_url)
    if target.frames is not None:
        frames = target.frames
        connection.validate = lambda frame: frames.check(frame.data, frame.raw)
    _on_engine(connection.open(user["access_token"] if with_token else None, origin, TIMEOUT))
    try:
        yield connection
    finally:
        _on_engine(connection.close())


def _next_frame(connection: UserConnection, start: int, what: str) -> dict:
    """The first frame received after index ``start``, checked against the contract; RuleBroken if none."""
    frame = _on_engine(connection.next_frame(start, TIMEOUT))
    if frame is None:
        closed = f" (the socket closed: {connection.close_code})" if connection.closed else ""
        raise RuleBroken(f"no frame within {TIMEOUT:g} s while waiting for {what}{closed}")
    _on_engine(_raise_violations(connection))
    if frame.data is None:
        raise RuleBroken(
            f"a frame that is not a JSON object arrived while waiting for {what}: {frame.raw[:120]!r}")
    return frame.data


async def _raise_violations(connection: UserConnection) -> None:
    connection.raise_violations()


def _run(connection: UserConnection, content: str, thread_id: str | None = None) -> list[dict]:
    """The frames of one run: its events, or the error frame that refused the message."""
    async def run_to_end() -> RunHandle:
        run = await connection.send_message(content, thread_id)
        return await connection.wait_for_run(run, 30)

    run = _on_engine(run_to_end(), 30)
    return [run.rejection] if run.rejection is not None else list(run.events)


def _chat(target: Target, state: dict) -> list[dict]:
    """One run of alice's (cached): the evidence several rules share."""
    if "run" not in state:
        user = _user(target, state)
        with _socket(target, user) as ws:
            state["run"] = _run(ws, "How much does the plan cost?")
    return state["run"]


# ---------------------------------------------------------------------- auth rules
def auth_register(target: Target, state: dict) -> str:
    user = _user(target, state)
    return f"registered {user['email']}: user_id {user['user_id']}"


def auth_register_errors(target: Target, state: dict) -> str:
    user = _user(target, state)
    for email, password, expected in (
        (user["email"], PASSWORD, 409),
        ("not-an-email", PASSWORD, 422),
        (f"{target.prefix}short@example.test", "short", 422),
    ):
        _call(target, "post", "/auth/register", expected, body={"email": email, "password": password})
    return "duplicate email 409, bad email 422, short password 422"


def auth_login_identical_failures(target: Target, state: dict) -> str:
    user = _user(target, state)
    wrong, unknown = (
        _send(target, "post", "/auth/login", body={"email": email, "password": "wrong-password"})
        for email in (user["email"], f"nobody-{uuid.uuid4().hex[:8]}@example.test")
    )
    _conform(wrong, "/auth/login", "post", 401)
    _conform(unknown, "/auth/login", "post", 401)
    if wrong.content != unknown.content:
        raise RuleBroken(
            f"wrong password and unknown email answer different bodies "
            f"({wrong.text[:80]!r} vs {unknown.text[:80]!r}): accounts can be enumerated"
        )
    return "401 with byte-identical bodies"


def auth_refresh_rotates(target: Target, state: dict) -> str:
    user = new_user(target, "refresh")
    first = _call(target, "post", "/auth/refresh", 200, body={"refresh_token": user["refresh_token"]})
    if first["refresh_token"] == user["refresh_token"]:
        raise RuleBroken("refresh returned the same refresh token: it must rotate")
    for token in (user["refresh_token"], first["refresh_token"]):
        _call(target, "post", "/auth/refresh", 401, body={"refresh_token": token})
    return "new pair once; the used token and (after reuse) its family answer 401"


def auth_me(target: Target, state: dict) -> str:
    user = _user(target, state)
    me = _call(target, "get", "/auth/me", 200, user["access_token"])
    if str(me["user_id"]) != str(user["user_id"]):
        raise RuleBroken(f"/auth/me names user {me['user_id']}, the token belongs to {user['user_id']}")
    _call(target, "get", "/auth/me", 401)
    return "200 with the caller's id; 401 without a token"


def auth_jwks(target: Target, state: dict) -> str:
    import jwt

    user = _user(target, state)
    jwks = _call(target, "get", "/.well-known/jwks.json", 200)
    header = jwt.get_unverified_header(user["access_token"])
    kids = [k.get("kid") for k in jwks["keys"]]
    if header.get("alg") != "RS256":
        raise RuleBroken(f"access tokens are signed with {header.get('alg')}, the contract says RS256")
    if header.get("kid") not in kids:
        raise RuleBroken(f"the access token's kid {header.get('kid')!r} is not in the JWKS ({kids})")
    claims = jwt.decode(user["access_token"], options={"verify_signature": False})
    missing = [c for c in ("sub", "iat", "exp", "jti", "iss", "aud") if c not in claims]
    if missing:
        raise RuleBroken(f"access token lacks the claim(s) {', '.join(missing)}")
    return f"RS256, kid {header.get('kid')} in the JWKS, claims sub iat exp jti iss aud"


def auth_logout_revokes(target: Target, state: dict) -> str:
    user = new_user(target, "logout")
    token = user["access_token"]
    _call(target, "post", "/auth/logout", 204, token)
    _call(target, "get", "/auth/me", 401, token)
    _call(target, "get", "/threads", 401, token)
    try:
        _call(target, "post", "/auth/refresh", 401, body={"refresh_token": user["refresh_token"]})
    except RuleBroken as exc:
        raise RuleBroken(f"the session's refresh token still works after logout: {exc}") from None
    return "204, then 401 on auth and backend, and the session's refresh token is dead"


# ---------------------------------------------------------------------- backend rules
def backend_health(target: Target, state: dict) -> str:
    body = _call(target, "get", "/health", 200)
    if body.get("status") != "ok":
        raise RuleBroken(f"/health answered 200 with status {body.get('status')!r}, expected 'ok'")
    return "200 {status: ok}"


def backend_requires_token(target: Target, state: dict) -> str:
    checked = []
    for method, path in (("get", "/threads"), ("get", "/workspaces"), ("post", "/workspaces")):
        _call(target, method, path, 401, body={"name": "x"})
        checked.append(f"{method.upper()} {path}")
    return f"401 without a token on {', '.join(checked)}"


def backend_www_authenticate(target: Target, state: dict) -> str:
    reply = _send(target, "get", "/threads")
    value = reply.headers.get("WWW-Authenticate", "")
    if not value.lower().startswith("bearer"):
        raise RuleBroken(f"a 401 carries WWW-Authenticate {value!r}, expected 'Bearer'")
    return "401 carries WWW-Authenticate: Bearer"


def backend_threads(target: Target, state: dict) -> str:
    user = _user(target, state)
    run = _chat(target, state)
    thread = run[-1]["thread_id"]
    token = user["access_token"]
    listed = _call(target, "get", "/threads", 200, token)
    if thread not in [t["thread_id"] for t in listed]:
        raise RuleBroken(f"GET /threads does not list the thread {thread} the chat created")
    _call(target, "get", "/threads/{thread_id}", 200, token, thread_id=thread)
    messages = _call(target, "get", "/threads/{thread_id}/messages", 200, token, thread_id=thread)
    roles = [m["role"] for m in messages]
    if roles[:2] != ["user", "agent"]:
        raise RuleBroken(
            f"the thread's messages have roles {roles}, expected the user's message then the answer"
        )
    return f"thread {thread} listed and readable, messages {roles}"


def backend_not_found_is_uniform(target: Target, state: dict) -> str:
    _chat(target, state)
    thread = state["run"][-1]["thread_id"]
    mallory = _user(target, state, "mallory")
    bodies = {}
    for label, tid in (
        ("another user's", thread),
        ("unknown", str(uuid.uuid4())),
        ("malformed", "not-an-id"),
    ):
        for method, path in (
            ("get", "/threads/{thread_id}"),
            ("get", "/threads/{thread_id}/messages"),
            ("delete", "/threads/{thread_id}"),
        ):
            reply = _send(target, method, path, mallory["access_token"], thread_id=tid)
            try:
                _conform(reply, path, method, 404)
            except RuleBroken as exc:
                raise RuleBroken(f"{label} thread: {exc}") from None
            bodies.setdefault(reply.content, []).append(f"{method.upper()} {label}")
    if len(bodies) > 1:
        raise RuleBroken(f"404 bodies differ ({len(bodies)} kinds): existence of another user's thread leaks")
    return "404 with one body for another user's, unknown and malformed ids (GET, GET messages, DELETE)"


def backend_notes(target: Target, state: dict) -> str:
    user = _user(target, state)
    _chat(target, state)
    thread = state["run"][-1]["thread_id"]
    token = user["access_token"]
    before = _call(target, "get", "/threads/{thread_id}", 200, token, thread_id=thread)["message_count"]
    notes = "/threads/{thread_id}/messages"
    added = _call(target, "post", notes, 201, token, {"content": "note"}, thread_id=thread)
    if added["message_count"] != before + 1:
        raise RuleBroken(f"message_count went from {before} to {added['message_count']} for one note")
    _call(target, "post", notes, 422, token, {}, thread_id=thread)
    return f"201 with message_count {before} -> {added['message_count']}; 422 without content"


def backend_workspaces(target: Target, state: dict) -> str:
    token = _user(target, state)["access_token"]
    made = _call(target, "post", "/workspaces", 201, token, {"name": f"{target.prefix}conf"})
    listed = _call(target, "get", "/workspaces", 200, token)
    if made["workspace_id"] not in [w["workspace_id"] for w in listed]:
        raise RuleBroken(f"GET /workspaces does not list the workspace {made['workspace_id']} just created")
    for name in ("", "x" * 101):
        _call(target, "post", "/workspaces", 422, token, {"name": name})
    return "201 and listed; 422 for an empty or a 101-character name"


def backend_delete(target: Target, state: dict) -> str:
    user = new_user(target, "delete")
    with _socket(target, user) as ws:
        thread = _run(ws, "a thread to delete")[-1]["thread_id"]
    for method, expected in (("delete", 204), ("get", 404)):
        _call(target, method, "/threads/{thread_id}", expected, user["access_token"], thread_id=thread)
    return "204, then 404"


# ---------------------------------------------------------------------- WebSocket rules
def ws_handshake(target: Target, state: dict) -> str:
    user = _user(target, state)
    outcomes = []
    for label, with_token, origin, expected in (
        ("no token", False, None, 401),
        ("a foreign Origin", True, FOREIGN_ORIGIN, 403),
    ):
        try:
            with _socket(target, user, origin, with_token):
                raise RuleBroken(f"the handshake with {label} was accepted, expected HTTP {expected}")
        except ConnectionRefused as exc:
            status = exc.status
            if status != expected:
                raise RuleBroken(
                    f"the handshake with {label} was refused with HTTP {status}, expected {expected}"
                ) from None
            outcomes.append(f"{label}: {status}")
    return "; ".join(outcomes)


def ws_run_grammar(target: Target, state: dict) -> str:
    user = _user(target, state)
    frames = _chat(target, state)
    types = [f["type"] for f in frames]
    if types[0] != "agent_started" or types[-1] != "agent_completed" or "agent_thinking" not in types:
        raise RuleBroken(
            f"the run's events are {types}: expected agent_started, agent_thinking..., "
            "tool pairs, agent_completed"
        )
    seqs = [f["seq"] for f in frames]
    if seqs != list(range(1, len(frames) + 1)):
        raise RuleBroken(f"seq runs {seqs}, expected 1..{len(frames)}")
    open_calls: list[str] = []
    for frame in frames:
        call = frame["payload"].get("tool_call_id")
        if frame["type"] == "tool_executing":
            open_calls.append(call)
        elif frame["type"] == "tool_completed":
            if call not in open_calls:
                raise RuleBroken(f"tool_completed {call} has no earlier tool_executing")
            open_calls.remove(call)
    if open_calls:
        raise RuleBroken(f"tool call(s) {open_calls} never completed")
    foreign = {f["user_id"] for f in frames} - {str(user["user_id"])}
    if foreign:
        raise RuleBroken(
            f"events carry user_id(s) {sorted(foreign)}, not the socket owner's {user['user_id']}"
        )
    if len({f["run_id"] for f in frames}) != 1:
        raise RuleBroken("one message's events carry several run ids")
    return f"{' -> '.join(types)}; every frame validated against asyncapi.yaml"


def ws_errors(target: Target, state: dict) -> str:
    _chat(target, state)
    thread = state["run"][-1]["thread_id"]
    mallory = _user(target, state, "mallory")
    cases = (
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        (json.dumps({"type": "nonsense", "client_message_id": "c1"}), "unknown_type"),
        (json.dumps({"type": "user_message", "client_message_id": "c2"}), "missing_field"),
        (
            json.dumps(
                {"type": "user_message", "content": "hi", "client_message_id": "c3", "thread_id": thread}
            ),
            "thread_not_found",
        ),
    )
    seen = []
    with _socket(target, mallory) as ws:
        for raw, code in cases:
            start = len(ws.frames)
            _on_engine(ws.send_raw(raw))
            frame = _next_frame(ws, start, f"the error answering {raw[:40]!r}")
            if frame.get("type") != "error" or frame.get("code") != code:
                raise RuleBroken(
                    f"{raw[:40]!r} was answered with {frame.get('type')} "
                    f"{frame.get('code', '')}, expected error {code}"
                )
            seen.append(code)
        # the socket stays usable
        run = _run(ws, "still there?")
    if run[-1]["type"] != "agent_completed":
        raise RuleBroken(f"after the errors the socket's next run ended with {run[-1]['type']}")
    return f"error codes {', '.join(seen)}; the socket stayed usable"


RULES: dict[str, list[Rule]] = {
    "auth": [
        Rule("AUTH-1", "MUST", "POST /auth/register creates a user: 201 {user_id}", auth_register),
        Rule(
            "AUTH-2",
            "MUST",
            "duplicate email 409; bad email or password under 8 characters 422; Error bodies",
            auth_register_errors,
        ),
        Rule(
            "AUTH-3",
            "MUST",
            "wrong password and unknown email: 401 with byte-identical bodies",
            auth_login_identical_failures,
        ),
        Rule(
            "AUTH-4",
            "MUST",
            "refresh tokens rotate and are single-use; reuse revokes the family",
            auth_refresh_rotates,
        ),
        Rule("AUTH-5", "MUST", "GET /auth/me names the token's user; 401 without a token", auth_me),
        Rule(
            "AUTH-6",
            "MUST",
            "access tokens are RS256 with a kid from the JWKS and the claims sub iat exp jti iss aud",
            auth_jwks,
        ),
        Rule(
            "AUTH-7",
            "MUST",
            "logout ends the session: the access token at once on auth and backend, and its refresh token",
            auth_logout_revokes,
        ),
    ],
    "backend": [
        Rule("API-1", "MUST", "GET /health answers 200 {status: ok}", backend_health),
        Rule(
            "API-2",
            "MUST",
            "every backend endpoint but /health needs a Bearer token: 401 otherwise",
            backend_requires_token,
        ),
        Rule("API-3", "SHOULD", "a 401 carries WWW-Authenticate: Bearer", backend_www_authenticate),
        Rule(
            "API-4",
            "MUST",
            "a chat's thread is listed, readable, and holds the user's message and the answer",
            backend_threads,
        ),
        Rule(
            "API-5",
            "MUST",
            "another user's, unknown and malformed thread ids: 404 with one body",
            backend_not_found_is_uniform,
        ),
        Rule(
            "API-6",
            "MUST",
            "POST /threads/{id}/messages adds a note: 201, message_count + 1; 422 without content",
            backend_notes,
        ),
        Rule(
            "API-7",
            "MUST",
            "POST /workspaces creates and lists a workspace; 422 for a bad name",
            backend_workspaces,
        ),
        Rule("API-8", "MUST", "DELETE /threads/{id} answers 204, then the thread is 404", backend_delete),
    ],
    "websocket": [
        Rule(
            "WS-1",
            "MUST",
            "the handshake refuses a missing token (401) and a foreign Origin (403)",
            ws_handshake,
        ),
        Rule(
            "WS-2",
            "MUST",
            "a message streams agent_started .. agent_completed, seq 1..n, tool pairs, the "
            "owner's user_id, valid frames",
            ws_run_grammar,
        ),
        Rule(
            "WS-3",
            "MUST",
            "bad frames get error frames with the contract's codes; the socket stays usable",
            ws_errors,
        ),
    ],
}


def run_rules(target: Target, area: str) -> list[Result]:
    """Check every rule of ``area`` (auth, backend, websocket); later rules reuse earlier evidence."""
    if area not in RULES:
        raise ValueError(f"unknown rule area {area!r}: choose one of {', '.join(RULES)}")
    state: dict = {}
    results = []
    for rule in RULES[area]:
        started = time.monotonic()
        try:
            evidence, ok = rule.check(target, state), True
        except RuleBroken as exc:
            evidence, ok = str(exc), False
        except (requests.RequestException, ConnectionRefused, OSError, TimeoutError) as exc:
            evidence, ok = f"{type(exc).__name__}: {exc}"[:300], False
        results.append(Result(rule, ok, mask_text(evidence), time.monotonic() - started))
    return results

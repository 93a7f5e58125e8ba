"""Race engine: fire N operations at one instant, collect every outcome, judge exactly-once.

Operations run in threads released together by a ``threading.Barrier`` (psycopg2,
requests and the sync websockets client all block, and threads put the requests
on the wire within a millisecond or two of each other).  Every operation has
its own timeout; a wait that times out becomes a failed ``Outcome`` whose
error names the actor and what it was waiting for, never a hang.

The judges (``exactly_one_winner``, ``counter_report``, ...) are pure functions
over outcomes and observed state, so they are unit-tested without a platform.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import redis
import requests
from websockets.sync.client import ClientConnection, connect

from . import context
from .model import TestUser, Tokens
from .secrets import mask_url

HTTP_TIMEOUT = 10.0
# Password hashing (argon2id) makes sign-up and login the slow calls on a busy machine.
SIGN_IN_TIMEOUT = 30.0
SIGN_IN_PARALLELISM = 8
PASSWORD = "race-condition-pw-1"


class RaceError(AssertionError):
    """A race check failed; the message names the anomaly."""


@dataclass
class Outcome:
    actor: str
    ok: bool
    value: Any = None
    error: str = ""
    started: float = 0.0
    ended: float = 0.0

    @property
    def status(self) -> Any:
        return getattr(self.value, "status_code", self.value)

    def __str__(self) -> str:
        what = f"ok {self.status}" if self.ok else f"error {self.error}"
        return f"{self.actor}: {what} ({(self.ended - self.started) * 1000:.0f} ms)"


def fire_at_once(
    actors: Sequence[str], operation: Callable[[int, str], Any], timeout: float
) -> list[Outcome]:
    """Run ``operation(index, actor)`` for every actor in its own thread, released together.

    Exceptions become failed outcomes.  ``timeout`` bounds the whole race; an
    operation still running then is reported as timed out.
    """
    if not actors:
        raise ValueError("a race needs at least one actor")
    barrier = threading.Barrier(len(actors))
    outcomes: list[Outcome | None] = [None] * len(actors)

    def run(index: int, actor: str) -> None:
        try:
            barrier.wait(timeout)
        except threading.BrokenBarrierError:
            outcomes[index] = Outcome(actor, False, error="the barrier broke before all actors were ready")
            return
        started = time.monotonic()
        try:
            value = operation(index, actor)
            outcomes[index] = Outcome(actor, True, value, started=started, ended=time.monotonic())
        except Exception as exc:  # every failure is an outcome to judge, not a crash of the race
            outcomes[index] = Outcome(
                actor, False, error=f"{type(exc).__name__}: {exc}", started=started, ended=time.monotonic()
            )

    threads = [threading.Thread(target=run, args=(i, a), daemon=True) for i, a in enumerate(actors)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        outcome or Outcome(actors[i], False, error=f"still running after the race timeout of {timeout:g} s")
        for i, outcome in enumerate(outcomes)
    ]


# ---------------------------------------------------------------------- judges
def exactly_one_winner(
    outcomes: Sequence[Outcome],
    what: str,
    win: Callable[[Outcome], bool],
    lose: Callable[[Outcome], bool],
    loser_text: str,
) -> Outcome:
    winners = [o for o in outcomes if win(o)]
    others = [o for o in outcomes if not win(o) and not lose(o)]
    if len(winners) != 1:
        listing = "; ".join(str(o) for o in winners) or "none"
        raise RaceError(
            f"{what}: {len(winners)} of {len(outcomes)} concurrent attempts won, exactly one must "
            f"(winners: {listing})"
        )
    if others:
        raise RaceError(
            f"{what}: {len(others)} attempt(s) neither won nor got {loser_text}: "
            + "; ".join(str(o) for o in others[:5])
        )
    return winners[0]


def counter_report(expected: int, counter: int, rows: int, what: str) -> None:
    if counter == expected == rows:
        return
    lost = expected - counter
    detail = f"lost update: {lost} of {expected} increments vanished" if lost > 0 else "counter drifted"
    raise RaceError(f"{what}: {detail} (counter says {counter}, {rows} rows exist, {expected} expected)")


def duplicates(values: Sequence[str]) -> list[str]:
    return [value for value, count in Counter(values).items() if count > 1]


# ---------------------------------------------------------------------- platform client
@dataclass
class Target:
    auth_url: str
    backend_url: str
    ws_url: str
    redis_url: str = ""
    auth_database_url: str = ""
    backend_database_url: str = ""
    analytics_database_url: str = ""
    faults: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [name for name in ("auth_url", "backend_url", "ws_url") if not getattr(self, name)]
        if missing:
            raise ValueError(
                f"race target lacks {', '.join(missing)}: run the suite through suites/ (its __init__ "
                "starts or attaches the platform) or pass --variable AUTH_URL:... BACKEND_URL:... WS_URL:..."
            )
        if not self.analytics_database_url and self.backend_database_url:
            parts = urllib.parse.urlsplit(self.backend_database_url)
            self.analytics_database_url = urllib.parse.urlunsplit(parts._replace(path="/analytics"))

    @classmethod
    def from_state(cls, state: dict) -> Target:
        return cls(
            state["auth_url"],
            state["backend_url"],
            state["ws_url"],
            state.get("redis_url", ""),
            state.get("auth_database_url", ""),
            state.get("backend_database_url", ""),
            faults=list(state.get("faults", [])),
        )

    def describe(self) -> str:
        return f"auth {self.auth_url}, backend {self.backend_url}, redis {mask_url(self.redis_url)}"


def _json_or_text(reply: requests.Response) -> Any:
    try:
        return reply.json()
    except ValueError:
        return reply.text[:200]


def new_user(target: Target, label: str) -> TestUser:
    ctx = context.current()
    email = ctx.email(label)
    user = TestUser(label, email, PASSWORD, canary=f"CANARY-{label}-{uuid.uuid4().hex[:8]}")
    reply = _post(target.auth_url, "/auth/register", {"email": email, "password": PASSWORD}, label)
    if reply.status_code != 201:
        raise RaceError(f"registering {label} ({email}) answered {reply.status_code}: {_json_or_text(reply)}")
    user.user_id = reply.json()["user_id"]
    if target.auth_url.rstrip("/") == ctx.get("AUTH_URL").rstrip("/"):
        ctx.record_user(user)  # not users of a platform started for one failure injection: it is gone
    login(target, user)
    return user


def _post(base: str, path: str, body: dict, label: str) -> requests.Response:
    try:
        return requests.post(f"{base}{path}", json=body, timeout=SIGN_IN_TIMEOUT)
    except requests.RequestException as exc:
        raise RaceError(
            f"{label}: POST {path} got no answer from {base} within {SIGN_IN_TIMEOUT:g} s "
            f"({type(exc).__name__}); is the auth service overloaded or down?"
        ) from None


def login(target: Target, user: TestUser) -> Tokens:
    reply = _post(
        target.auth_url, "/auth/login", {"email": user.email, "password": user.password}, user.label
    )
    if reply.status_code != 200:
        raise RaceError(f"login of {user.label} answered {reply.status_code}: {_json_or_text(reply)}")
    body = reply.json()
    user.tokens = Tokens(body["access_token"], body["refresh_token"], body.get("expires_in", 0))
    user.issued_access_tokens.append(body["access_token"])
    return user.tokens


def auth_header(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def refresh(target: Target, refresh_token: str, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).post(
        f"{target.auth_url}/auth/refresh", json={"refresh_token": refresh_token}, timeout=HTTP_TIMEOUT
    )


def warm_sessions(count: int, base_url: str) -> list[requests.Session]:
    """HTTP sessions whose connection to ``base_url`` is already open, so a race starts at the request."""
    sessions = [requests.Session() for _ in range(count)]
    for session in sessions:
        session.get(f"{base_url}/health", timeout=HTTP_TIMEOUT)
    return sessions


def get_json(target: Target, user: TestUser, path: str) -> Any:
    reply = requests.get(
        f"{target.backend_url}{path}", headers=auth_header(user.access_token), timeout=HTTP_TIMEOUT
    )
    if reply.status_code != 200:
        raise RaceError(f"GET {path} as {user.label} answered {reply.status_code}: {_json_or_text(reply)}")
    return reply.json()


def open_socket(target: Target, token: str, timeout: float = HTTP_TIMEOUT) -> ClientConnection:
    return connect(
        target.ws_url,
        additional_headers=auth_header(token),
        open_timeout=timeout,
        compression=None,
        ping_interval=None,
    )


def run_to_end(
    ws: ClientConnection, user: TestUser, content: str, thread_id: str | None, timeout: float
) -> list[dict]:
    """Send one user_message and return the frames of its run until agent_completed/agent_error."""
    cmid = uuid.uuid4().hex
    frame = {"type": "user_message", "content": content, "client_message_id": cmid}
    if thread_id:
        frame["thread_id"] = thread_id
    ws.send(json.dumps(frame))
    frames, deadline = [], time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            seen = [f.get("type") for f in frames]
            raise RaceError(f"{user.label}: run {cmid} did not end within {timeout:g} s; it sent {seen}")
        try:
            data = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        frames.append(data)
        owner = data.get("user_id")
        if owner is not None and user.user_id and owner != user.user_id:
            # Definitive evidence; waiting for the own run's end would only turn it into a timeout.
            raise RaceError(
                f"cross-user event: {user.label}'s socket received a {data.get('type')} frame of user "
                f"{owner} (run {data.get('run_id')})"
            )
        if data.get("client_message_id") == cmid and data.get("type") in (
            "agent_completed",
            "agent_error",
            "error",
        ):
            return frames


def start_thread(target: Target, user: TestUser, title: str, timeout: float) -> str:
    with open_socket(target, user.access_token, timeout) as ws:
        frames = run_to_end(ws, user, title, None, timeout)
    last = frames[-1]
    if last.get("type") != "agent_completed" or not last.get("thread_id"):
        raise RaceError(f"{user.label}: starting a thread ended with {last.get('type')}: {last}")
    user.thread_ids.add(last["thread_id"])
    return last["thread_id"]


def disconnect_mid_request(target: Target, user: TestUser, path: str, after: float) -> None:
    """Send ``GET path`` over a raw socket and hang up ``after`` seconds later, before the reply."""
    parts = urllib.parse.urlsplit(target.backend_url)
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {user.access_token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        time.sleep(after)
        # RST instead of FIN: the server learns at once that nobody waits for the answer.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


# ---------------------------------------------------------------------- stores
def pg_value(url: str, sql: str, params: tuple = ()) -> Any:
    rows = pg_rows(url, sql, params)
    return rows[0][0] if rows else None


def pg_rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    try:
        conn = psycopg2.connect(url, connect_timeout=5)
    except psycopg2.Error as exc:
        raise RaceError(f"cannot connect to {mask_url(url)}: {str(exc).strip()}") from None
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def redis_client(url: str) -> redis.Redis:
    if not url:
        raise ValueError("REDIS_URL is empty: the Redis race checks need the platform's Redis URL")
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


@dataclass
class WorkspaceState:
    user: str
    auth_count: int
    backend_ids: list[str]
    analytics_ids: list[str]

    @property
    def consistent(self) -> bool:
        return self.auth_count == len(self.backend_ids) == len(self.analytics_ids) and sorted(
            self.backend_ids
        ) == sorted(self.analytics_ids)

    def __str__(self) -> str:
        return (
            f"{self.user}: auth workspace_count={self.auth_count}, backend workspaces="
            f"{len(self.backend_ids)}, analytics workspace_created events={len(self.analytics_ids)}"
        )


def workspace_state(target: Target, user: TestUser) -> WorkspaceState:
    for name in ("auth_database_url", "backend_database_url", "analytics_database_url"):
        if not getattr(target, name):
            raise ValueError(f"{name.upper()} is empty: the cross-store check reads all three databases")
    count = pg_value(
        target.auth_database_url,
        "SELECT workspace_count FROM user_workspace_counts WHERE user_id = %s",
        (user.user_id,),
    )
    backend = [
        str(r[0])
        for r in pg_rows(
            target.backend_database_url,
            "SELECT workspace_id FROM workspaces WHERE user_id = %s",
            (user.user_id,),
        )
    ]
    if target.analytics_database_url.startswith(("clickhouse", "http")):
        analytics = clickhouse_workspace_events(target.analytics_database_url, user.user_id)
    else:
        analytics = [
            str(r[0])
            for r in pg_rows(
                target.analytics_database_url,
                "SELECT workspace_id FROM events WHERE user_id = %s AND kind = 'workspace_created'",
                (user.user_id,),
            )
        ]
    return WorkspaceState(user.label, int(count or 0), backend, analytics)


def clickhouse_workspace_events(url: str, user_id: str) -> list[str]:
    """Workspace ids of the user's workspace_created events in ClickHouse (UNTESTED: no server here)."""
    try:
        import clickhouse_connect
    except ImportError:
        raise ValueError(
            "ANALYTICS_DATABASE_URL names ClickHouse but clickhouse-connect is not installed: "
            "pip install 'clickhouse-connect>=0.7,<1'"
        ) from None
    client = clickhouse_connect.get_client(dsn=url)
    try:
        result = client.query(
            "SELECT toString(workspace_id) FROM events "
            "WHERE user_id = {u:UUID} AND kind = 'workspace_created'",
            parameters={"u": user_id},
        )
        return [row[0] for row in result.result_rows]
    finally:
        client.close()


def partial_state_report(state: WorkspaceState) -> str:
    applied = []
    if state.auth_count:
        applied.append(f"auth (workspace_count={state.auth_count})")
    if state.backend_ids:
        applied.append(f"backend ({len(state.backend_ids)} workspace rows)")
    if state.analytics_ids:
        applied.append(f"analytics ({len(state.analytics_ids)} events)")
    missing_events = sorted(set(state.backend_ids) - set(state.analytics_ids))
    missing_rows = sorted(set(state.analytics_ids) - set(state.backend_ids))
    detail = "; ".join(
        filter(
            None,
            [
                f"stores applied: {', '.join(applied) or 'none'}",
                f"workspaces without event: {missing_events}" if missing_events else "",
                f"events without workspace: {missing_rows}" if missing_rows else "",
            ],
        )
    )
    return f"partially applied cross-service transaction for {state}; {detail}"


def run_pool(count: int, fn: Callable[[int], Any], parallelism: int = 64) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, min(count, parallelism))) as pool:
        return list(pool.map(fn, range(count)))

"""Pure logic behind CrosstalkIntegrity: raw HTTP probes, a rank test for timing, and the
persistence oracle that reconciles what a user saw streamed with what the platform stored.

Nothing here knows Robot Framework; the keyword library turns the results into verdicts.
"""

from __future__ import annotations

import base64
import math
import os
import socket
import statistics
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .sequence import TERMINAL_TYPES as TERMINAL
from .sequence import answer_of

# Fields a request might use to name a user or an owner: all must be ignored by the server.
IDENTITY_FIELDS = ("user_id", "userId", "sub", "owner", "owner_id", "author_id", "created_by", "account_id")


# ---------------------------------------------------------------------- raw HTTP probes
@dataclass
class RawReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def raw_request(
    url: str,
    path_and_query: str,
    headers: Sequence[tuple[str, str]],
    method: str = "GET",
    body: bytes = b"",
    timeout: float = 10.0,
    upgrade: bool = False,
) -> RawReply:
    """One HTTP/1.1 request written byte for byte, so headers may repeat and the query is exactly as given.

    ``upgrade`` makes it a WebSocket handshake (the status is 101 when the server accepts it).
    """
    parts = urllib.parse.urlsplit(url)
    host, port = (
        parts.hostname or "127.0.0.1",
        parts.port or (443 if parts.scheme in ("https", "wss") else 80),
    )
    if parts.scheme in ("https", "wss"):
        raise ValueError(f"raw probes speak plain HTTP only; {url} needs TLS: probe the service behind it")
    lines = [f"{method} {path_and_query} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    if upgrade:
        key = base64.b64encode(os.urandom(16)).decode()
        lines[2:3] = [
            "Connection: Upgrade",
            "Upgrade: websocket",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    wire = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(wire)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            raise ConnectionError(
                f"{method} {path_and_query}: not an HTTP answer: {status_line[:80]!r}"
            ) from None
        reply_headers = [
            tuple(part.strip() for part in line.split(":", 1)) for line in header_lines if ":" in line
        ]
        if status == 101:
            return RawReply(status, reply_headers, b"")
        length = next((int(v) for k, v in reply_headers if k.lower() == "content-length"), None)
        while length is not None and len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return RawReply(status, reply_headers, rest if length is None else rest[:length])


@dataclass(frozen=True)
class Channel:
    """One place a server might read a credential from: ``name`` explains it in failure messages."""

    name: str
    headers: tuple[tuple[str, str], ...] = ()
    query: str = ""


def channels_for(token: str, genuine: str | None = None) -> list[Channel]:
    """Every non-contract channel carrying ``token``, plus the header variants that must still verify it.

    ``genuine`` (a valid token) adds the duplicated-header cases: the bad token next to a good one.
    """
    quoted = urllib.parse.quote(token, safe="")
    found = [
        Channel("Authorization: Bearer", (("Authorization", f"Bearer {token}"),)),
        Channel("Authorization: bearer (lower-case scheme)", (("Authorization", f"bearer {token}"),)),
        Channel("Authorization: BEARER (upper-case scheme)", (("Authorization", f"BEARER {token}"),)),
        Channel("Authorization without a scheme", (("Authorization", token),)),
        Channel("Authorization: Basic (another scheme)", (("Authorization", f"Basic {token}"),)),
        Channel("Authorization: Token (another scheme)", (("Authorization", f"Token {token}"),)),
        Channel("Authorization: JWT (another scheme)", (("Authorization", f"JWT {token}"),)),
        Channel("query ?access_token=", query=f"access_token={quoted}"),
        Channel("query ?token=", query=f"token={quoted}"),
        Channel("query ?jwt=", query=f"jwt={quoted}"),
        Channel("cookie access_token", (("Cookie", f"access_token={token}"),)),
        Channel("cookie token", (("Cookie", f"token={token}"),)),
        Channel("cookie session", (("Cookie", f"session={token}"),)),
        Channel("Sec-WebSocket-Protocol bearer, <token>", (("Sec-WebSocket-Protocol", f"bearer, {token}"),)),
        Channel(
            "Sec-WebSocket-Protocol access_token.<token>",
            (("Sec-WebSocket-Protocol", f"access_token.{token}"),),
        ),
        Channel("X-Access-Token header", (("X-Access-Token", token),)),
        Channel("X-Auth-Token header", (("X-Auth-Token", token),)),
    ]
    if genuine:
        found += [
            Channel(
                "duplicated Authorization (this token first, a valid one second)",
                (("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {genuine}")),
            ),
            Channel(
                "duplicated Authorization (a valid one first, this token second)",
                (("Authorization", f"Bearer {genuine}"), ("Authorization", f"Bearer {token}")),
            ),
        ]
    return found


def side_channels(token: str) -> list[Channel]:
    """The channels outside the contract (anything but one ``Authorization: Bearer`` header)."""
    scheme_variants = ("Authorization: Bearer", "Authorization: bearer", "Authorization: BEARER")
    return [c for c in channels_for(token) if not c.name.startswith(scheme_variants)]


# ---------------------------------------------------------------------- timing
@dataclass
class RankTest:
    """Result of a two-sided Mann–Whitney U test of sample ``a`` against sample ``b``."""

    u: float
    z: float
    p: float
    n_a: int
    n_b: int


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> RankTest:
    """Two-sided Mann–Whitney U test, normal approximation with tie and continuity correction.

    Accurate for 20 or more values per sample (the way it is used here); identical samples give p = 1.
    """
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        raise ValueError(f"the rank test needs at least 2 values per sample, got {n_a} and {n_b}")
    pooled = sorted([(value, 0) for value in a] + [(value, 1) for value in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        size = j - i + 1
        ties += size**3 - size
        i = j + 1
    rank_sum_a = sum(rank for rank, (_, group) in zip(ranks, pooled, strict=True) if group == 0)
    u = rank_sum_a - n_a * (n_a + 1) / 2
    mean = n_a * n_b / 2
    n = n_a + n_b
    variance = n_a * n_b / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return RankTest(u, 0.0, 1.0, n_a, n_b)
    z = (abs(u - mean) - 0.5) / math.sqrt(variance)
    z = max(z, 0.0)
    p = math.erfc(z / math.sqrt(2))  # two-sided
    return RankTest(u, z, min(1.0, p), n_a, n_b)


@dataclass
class TimingVerdict:
    """Whether two timing samples differ both significantly (p < alpha) and usefully (median gap)."""

    test: RankTest
    median_a: float
    median_b: float
    alpha: float
    min_difference: float

    @property
    def difference(self) -> float:
        return abs(self.median_a - self.median_b)

    @property
    def distinguishable(self) -> bool:
        return self.test.p < self.alpha and self.difference > self.min_difference

    def describe(self, name_a: str, name_b: str) -> str:
        return (
            f"median {name_a} {self.median_a * 1000:.1f} ms vs {name_b} {self.median_b * 1000:.1f} ms "
            f"(difference {self.difference * 1000:.1f} ms, threshold {self.min_difference * 1000:.0f} ms); "
            f"Mann-Whitney U={self.test.u:.0f}, n={self.test.n_a}+{self.test.n_b}, p={self.test.p:.2g} "
            f"(alpha {self.alpha:g})"
        )


def compare_timings(
    a: Sequence[float], b: Sequence[float], alpha: float, min_difference: float
) -> TimingVerdict:
    return TimingVerdict(
        mann_whitney_u(a, b), statistics.median(a), statistics.median(b), alpha, min_difference
    )


# ---------------------------------------------------------------------- persistence oracle
@dataclass
class StreamedRun:
    """What the client saw of one run: enough to find it in the store."""

    user: str  # label
    user_id: str
    run_id: str | None
    thread_id: str | None
    client_message_id: str
    content: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def terminals(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("type") in TERMINAL]

    @property
    def status(self) -> str | None:
        terminals = self.terminals
        if not terminals:
            return None
        return "completed" if terminals[-1].get("type") == "agent_completed" else "failed"

    @property
    def answer(self) -> str | None:
        return answer_of(self.events)

    @property
    def name(self) -> str:
        return f"{self.user}'s run {self.run_id or self.client_message_id}"


def reconcile_stream(run: StreamedRun) -> list[str]:
    """Problems visible in the stream alone: one terminal event, and every event names the run's thread."""
    problems = []
    if not run.run_id or not run.thread_id:
        return [f"{run.name} never started (no run_id or thread_id streamed)"]
    count = len(run.terminals)
    if count != 1:
        problems.append(
            f"{run.name} streamed {count} terminal events (agent_completed/agent_error), expected exactly 1"
        )
    stray = sorted({str(e.get("thread_id")) for e in run.events if e.get("thread_id") != run.thread_id})
    if stray:
        problems.append(f"{run.name} streamed events naming other threads: {', '.join(stray)}")
    return problems


def reconcile_rest(
    run: StreamedRun, messages: list[dict[str, Any]], message_count: int | None, counts: str = "all"
) -> list[str]:
    """Problems between one run's stream and its thread as the owner reads it over REST.

    ``counts``: what ``message_count`` counts, ``all`` messages or ``user`` messages only.
    """
    where = f"thread {run.thread_id} (REST)"
    mine = [m for m in messages if m.get("run_id") == run.run_id]
    questions = [m for m in mine if m.get("role") == "user"]
    answers = [m for m in mine if m.get("role") == "agent"]
    expected_answers = 1 if run.status == "completed" else 0
    counted = [m for m in messages if counts == "all" or m.get("role") == "user"]
    checks = [(len(questions) != 1,
               f"{run.name}: {len(questions)} user messages with its run_id in {where}, expected 1")]
    for question in questions:
        checks += [
            (question.get("client_message_id") != run.client_message_id,
             f"{run.name}: stored question has client_message_id {question.get('client_message_id')!r}, "
             f"streamed {run.client_message_id!r}"),
            (question.get("content") != run.content,
             f"{run.name}: stored question is not the sent content verbatim"),
        ]
    checks.append((len(answers) != expected_answers,
                   f"{run.name} ended {run.status}: {len(answers)} agent answers with its run_id in {where}, "
                   f"expected {expected_answers}"))
    for answer in answers:
        checks += [
            (run.answer is not None and answer.get("content") != run.answer,
             f"{run.name}: the stored answer differs from the streamed one"),
            (answer.get("client_message_id") != run.client_message_id,
             f"{run.name}: stored answer has client_message_id {answer.get('client_message_id')!r}"),
        ]
    checks.append((message_count is not None and message_count != len(counted),
                   f"thread {run.thread_id}: message_count {message_count} but {len(counted)} "
                   f"{'messages' if counts == 'all' else 'user messages'} stored (REST)"))
    return _broken(checks)


def reconcile_rows(
    run: StreamedRun,
    message_rows: list[tuple],
    run_row: tuple | None,
    thread_row: tuple | None,
    thread_message_rows: int,
) -> list[str]:
    """Problems between one run's stream and the database rows.

    ``message_rows``: (thread_id, user_id, role, client_message_id) of every message with the run's id;
    ``run_row``: (thread_id, user_id, status); ``thread_row``: (user_id, message_count);
    ``thread_message_rows``: how many message rows the run's thread holds.
    """
    checks = []
    for thread_id, user_id, role, cmid in message_rows:
        checks += [
            (str(thread_id) != run.thread_id,
             f"{run.name}: its {role} message row is in thread {thread_id}, not in {run.thread_id}"),
            (str(user_id) != run.user_id,
             f"{run.name}: its {role} message row belongs to user {user_id}, not {run.user_id}"),
            (cmid != run.client_message_id,
             f"{run.name}: its {role} message row has client_message_id {cmid!r}"),
        ]
    expected = 2 if run.status == "completed" else 1
    checks.append((len(message_rows) != expected,
                   f"{run.name} ended {run.status}: {len(message_rows)} message rows with its run_id, "
                   f"expected {expected}"))
    checks.append((run_row is None, f"{run.name}: no row in runs"))
    if run_row is not None:
        thread_id, user_id, status = run_row
        checks += [
            (status != run.status,
             f"{run.name}: runs.status is {status!r} but the stream ended {run.status!r}"),
            (str(thread_id) != run.thread_id or str(user_id) != run.user_id,
             f"{run.name}: runs row names thread {thread_id} of user {user_id}"),
        ]
    checks.append((thread_row is None, f"{run.name}: its thread {run.thread_id} has no row in threads"))
    if thread_row is not None:
        owner, count = thread_row
        checks += [
            (str(owner) != run.user_id,
             f"thread {run.thread_id} belongs to user {owner}, not to {run.user} ({run.user_id})"),
            (count != thread_message_rows,
             f"thread {run.thread_id}: message_count {count} but {thread_message_rows} message rows"),
        ]
    return _broken(checks)


def _broken(checks: Sequence[tuple[bool, str]]) -> list[str]:
    """A judge written as a table: the message of every (broken, message) row that is broken."""
    return [message for broken, message in checks if broken]


def runs_from_frames(label: str, user_id: str, frames: Sequence[Any]) -> list[StreamedRun]:
    """Every run a user started, rebuilt from the frames recorded on the user (``TestUser.frames``).

    A ``user_message`` sent (direction ``out``) gives the client_message_id and content; the events
    that came back with that client_message_id give run, thread and the terminal event.  Messages
    answered by an ``error`` frame (nothing was stored for them) and runs still in flight are left out.
    """
    sent: dict[str, str] = {}
    events: dict[str, list[dict[str, Any]]] = {}
    refused: set[str] = set()
    for frame in frames:
        data = getattr(frame, "data", None) or {}
        cmid = data.get("client_message_id")
        if not isinstance(cmid, str):
            continue
        if getattr(frame, "direction", "") == "out":
            if data.get("type") == "user_message" and isinstance(data.get("content"), str):
                sent[cmid] = data["content"]
        elif data.get("type") == "error":
            refused.add(cmid)
        elif data.get("run_id"):
            events.setdefault(cmid, []).append(data)
    runs = []
    for cmid, content in sent.items():
        stream = events.get(cmid, [])
        if cmid in refused or not any(e.get("type") in TERMINAL for e in stream):
            continue
        runs.append(StreamedRun(label, user_id, str(stream[0]["run_id"]), stream[0].get("thread_id"), cmid,
                                content, stream))
    return runs

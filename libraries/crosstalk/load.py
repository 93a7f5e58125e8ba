"""The load driver: N chat users in one process, on the shared engine loop.

Each simulated user is a real platform user (registered and logged in over
HTTP), holds one real WebSocket (:class:`crosstalk.connection.UserConnection`,
so every frame is time-stamped on arrival and recorded on the ``TestUser`` for
the isolation oracle) and sends messages, waiting for each run's events.

Two load models:

* **closed** - every user sends its next message when the previous run ended
  (plus the think time).  Latency is measured from the send.
* **open** - messages arrive at a fixed total rate whatever the server does;
  latency is measured from the *intended* send time of each message, so a
  stalled server cannot hide its stall by slowing the generator down (no
  coordinated omission).

Costs are kept per frame, not per user: no keepalive pings, no compression, no
per-frame task (the connection's waiter notification is switched off; the run
is resolved by a callback on the already-parsed frame).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests
from websockets.exceptions import ConnectionClosed

from . import context
from . import profile as target_profile
from .connection import UserConnection
from .httpretry import pooled_session
from .loadcore import TOPICS, ChatUserCore, FrameTail, Pending, RecentSet, parse_object
from .metrics import LoadMetrics, UserStats
from .model import Frame, TestUser, Tokens
from .resources_sampler import BackgroundSampler, generator_source, psutil_source, record_series
from .testhooks import prometheus_source

__all__ = ["TOPICS", "LoadConfig", "LoadModel", "LoadRun", "LoadUser", "run_load"]
GENERATOR_BUSY_PCT = 80.0
DEFAULT_KEEP_FRAMES = 64
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class LoadModel(Enum):
    """How messages are paced: ``closed`` waits for each answer, ``open`` keeps a fixed arrival rate."""

    CLOSED = "closed"
    OPEN = "open"


@dataclass
class LoadConfig:
    users: int
    messages: int = 1
    model: LoadModel = LoadModel.CLOSED
    rate: float = 0.0  # open model: messages per second over all users
    think_time: float = 0.0
    ramp_up: float = 0.0
    start_together: bool = True  # all users connected before the first message is sent
    message_timeout: float = 30.0
    connect_timeout: float = 15.0
    login_concurrency: int = 16
    same_thread: bool = True
    name: str = "load"
    # frames kept per connection (and per user) for failure messages, transcripts and the oracle;
    # every frame is checked on arrival whatever this is
    keep_frames: int = DEFAULT_KEEP_FRAMES
    # start a new thread after this many messages (0: one thread per user for the whole run); the
    # reference agent quotes a thread's whole history, so long soaks need short threads
    messages_per_thread: int = 0
    # gc.freeze() once users are logged in and connected: full collections then skip the setup's objects
    freeze_gc: bool = True
    # no automatic garbage collection while messages flow (the steady state makes no cyclic garbage;
    # a guard collects if some builds up), one collection after the run: no collector pause in the tail
    quiet_gc: bool = True
    # the scenario a run belongs to: runs merge (pabot processes) only within one scenario
    scenario: str = ""
    def validate(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be at least 1 (got {self.users}).")
        if self.messages < 1:
            raise ValueError(f"messages must be at least 1 per user (got {self.messages}).")
        if self.model is LoadModel.OPEN and self.rate <= 0:
            raise ValueError("The open model needs a rate in messages per second, e.g. rate=50.")
        if min(self.think_time, self.ramp_up) < 0 or self.message_timeout <= 0:
            raise ValueError("think time and ramp-up must be >= 0 and the message timeout > 0.")
        if self.keep_frames < 0 or self.messages_per_thread < 0:
            raise ValueError("keep_frames and messages_per_thread must be >= 0 (0: keep none / one thread).")


class LoadUser(ChatUserCore):
    """One simulated user on the engine loop: its connection, statistics and messages in flight.

    The protocol logic and every per-frame check live in
    :class:`crosstalk.loadcore.ChatUserCore`; this class adds the asyncio side
    (a future per message, one timer per message, the socket).
    """

    def __init__(self, user: TestUser, stats: UserStats, metrics: LoadMetrics,
                 canary_owners: dict[str, str] | None = None, messages_per_thread: int = 0):
        super().__init__(user, metrics, stats, canary_owners, messages_per_thread)
        self.connection: LoadConnection | None = None
        self.closing = False

    @property
    def metrics(self) -> LoadMetrics:
        return self.sink  # type: ignore[return-value]

    @metrics.setter
    def metrics(self, metrics: LoadMetrics) -> None:
        self.sink = metrics

    # ---------------------------------------------------------------- frames
    def on_event(self, data: dict[str, Any], mono: float) -> None:
        """An already-parsed frame (tests feed these by hand)."""
        self.on_frame(json.dumps(data), data, mono)

    def resolved(self, pending: Pending) -> None:
        if pending.waiter is not None and not pending.waiter.done():
            pending.waiter.set_result(pending.outcome)

    def on_closed(self) -> None:
        if self.closing:
            return
        conn = self.connection
        self.stats.dropped = True
        self.metrics.record_error(
            "connection_dropped",
            f"user '{self.user.label}': connection closed by the server with code "
            f"{conn.close_code if conn else None} {conn.close_reason if conn else ''}".strip(),
            self.stats,
        )
        self.fail_all("lost_in_drop", "lost when the connection dropped")

    # ---------------------------------------------------------------- sending
    async def send(self, intended: float) -> Pending:
        """Send one message meant to leave at ``intended`` (monotonic).

        The pending message's waiter resolves to None when the run completed
        correctly, else to the error kind.
        """
        assert self.connection is not None
        pending, text = self.next_message(intended)
        pending.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.connection.send_text(text, self.last_body)
        except AssertionError as exc:
            self.finish(pending, "send_failed", str(exc))
        return pending

    async def wait(self, pending: Pending, timeout: float) -> str | None:
        """The message's outcome; ``timeout`` after its intended send time it is recorded as a timeout."""
        if pending.done:
            return pending.outcome
        remaining = max(pending.intended + timeout - time.monotonic(), 0.0)
        # one timer per message instead of wait_for + shield: this runs for every message of every user
        timer = asyncio.get_running_loop().call_later(remaining, self.expire, pending, timeout)
        try:
            return await pending.waiter
        finally:
            timer.cancel()


class LoadConnection(UserConnection):
    """A UserConnection for load: every frame is checked as it arrives, only a bounded tail is kept.

    The last ``keep_frames`` frames of the connection (and of its user) stay
    for failure messages, transcripts and the isolation oracle; everything
    else is folded into the run's summaries and histograms on arrival.

    The per-frame path is kept short (issue 14): the reader awaits ``recv()``
    directly, reads one clock (the wall time of a kept frame is derived from
    it), parses with :func:`crosstalk.loadcore.parse_object` and maps names
    only when the target profile renames anything.
    """

    load_user: LoadUser

    def __init__(self, user: TestUser, label: str, url: str, keep_frames: int = DEFAULT_KEEP_FRAMES):
        super().__init__(user, label, url)
        if isinstance(user.frames, FrameTail) and user.frames.maxlen == keep_frames:
            self.frames = user.frames  # type: ignore[assignment]  # one connection: one tail serves both
        else:
            self.frames = FrameTail(keep_frames)  # type: ignore[assignment]
        self.keep = max(int(keep_frames), 0)
        profile = target_profile.current()
        self._canonical = None if profile.identity else profile.canonical_event
        self._wall_offset = time.time() - time.monotonic()  # wall time of a frame = its monotonic + this

    async def _read(self) -> None:
        assert self.ws is not None
        recv, received, clock = self.ws.recv, self._received, time.monotonic
        try:
            while True:
                message = await recv()
                received(message if isinstance(message, str) else message.decode("utf-8", "replace"), clock())
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.close_reason = f"receive failed: {exc}"
        finally:
            await self._reader_ended()

    def _received(self, raw: str, mono: float, at: float | None = None) -> Frame | None:
        """One incoming frame: checked by the load user, then kept in the tail (if any is kept)."""
        data = parse_object(raw)
        if data is not None and self._canonical is not None:
            data = self._canonical(data)  # the same canonical shape as a chat connection's frames
        self.load_user.on_frame(raw, data, mono, canonical=True)
        if self.keep:
            return self._keep("in", raw, data, mono + self._wall_offset if at is None else at, mono)
        return None

    def _keep(self, direction: str, raw: str, data: dict[str, Any] | None, at: float,
              mono: float) -> Frame | None:
        self.frames.record(direction, at, mono, raw, self.label)  # type: ignore[attr-defined]
        if self.user.frames is not self.frames:
            self.user.frames.append(Frame(direction, at, mono, raw, data, self.label))  # type: ignore[arg-type]
        if not self.listeners:
            return None
        frame = Frame(direction, at, mono, raw, data, self.label)  # type: ignore[arg-type]
        for listener in self.listeners:
            listener(frame)
        return frame

    def _record(self, direction, raw, at, mono):  # type: ignore[no-untyped-def]
        """The base class's entry point (tests feed frames through it)."""
        if direction == "in":
            return self._received(raw, mono, at)
        return self._keep(direction, raw, parse_object(raw), at, mono) if self.keep else None

    async def send_text(self, text: str, data: dict[str, Any] | None = None) -> None:
        """Send one frame (no run handle: the load user keeps its own bookkeeping); ``data`` is its JSON."""
        ws = self._open_socket()
        if self.keep:
            mono = time.monotonic()
            body = data if data is not None else parse_object(text)
            self._keep("out", text, body, mono + self._wall_offset, mono)
        await self._transmit(ws, text)


# -------------------------------------------------------------------- HTTP login
_http = threading.local()


def _session() -> requests.Session:
    session = getattr(_http, "session", None)
    if session is None:
        session = _http.session = pooled_session()  # a stale keep-alive connection is retried once
    return session


def register_and_login(auth_url: str, user: TestUser, timeout: float = 30.0) -> None:
    """Register ``user`` (201, or 409 when it exists) and log in; runs in a worker thread."""
    session = _session()
    body = {"email": user.email, "password": user.password}
    response = session.post(f"{auth_url}/auth/register", json=body, timeout=timeout)
    if response.status_code == 201:
        user.user_id = response.json().get("user_id")
        context.current().record_user(user)
    elif response.status_code != 409:
        raise AssertionError(
            f"Registering load user '{user.label}' at {auth_url} failed with HTTP {response.status_code}: "
            f"{response.text[:200]}"
        )
    login_user(auth_url, user, timeout)


def login_user(auth_url: str, user: TestUser, timeout: float = 30.0) -> None:
    response = _session().post(
        f"{auth_url}/auth/login", json={"email": user.email, "password": user.password}, timeout=timeout
    )
    if response.status_code != 200:
        raise AssertionError(
            f"Login of load user '{user.label}' at {auth_url} failed with HTTP {response.status_code}: "
            f"{response.text[:200]}"
        )
    body = response.json()
    user.tokens = Tokens(body["access_token"], body.get("refresh_token", ""), int(body.get("expires_in", 0)))
    user.issued_access_tokens.append(user.tokens.access_token)
    if user.user_id is None:
        me = _session().get(f"{auth_url}/auth/me", timeout=timeout,
                            headers={"Authorization": f"Bearer {user.tokens.access_token}"})
        if me.status_code == 200:
            user.user_id = me.json().get("user_id") or me.json().get("sub")


def new_load_users(count: int, prefix: str = "load") -> list[TestUser]:
    tag = uuid.uuid4().hex[:8]
    run_prefix = context.current().run_prefix
    width = max(2, len(str(count)))
    users = []
    for index in range(1, count + 1):
        label = f"{prefix}{index:0{width}d}"
        users.append(TestUser(
            label=label, email=f"{run_prefix}{prefix}-{tag}-{index}@crosstalk.test",
            password=secrets.token_urlsafe(12), canary=f"CANARY-{label}-{uuid.uuid4().hex[:12]}",
        ))
    return users


# -------------------------------------------------------------------- resources
def local_platform_pids(urls: Sequence[str]) -> list[int]:
    """Pids listening on the ports of ``urls`` when they are loopback addresses (else empty)."""
    ports = set()
    for url in urls:
        if not url:
            continue
        parts = urlsplit(url)
        if parts.hostname in LOOPBACK_HOSTS and parts.port:
            ports.add(parts.port)
    if not ports:
        return []
    try:
        listening = psutil.net_connections("tcp")
    except (psutil.AccessDenied, OSError):
        return []
    return sorted({c.pid for c in listening if c.status == psutil.CONN_LISTEN and c.pid
                   and c.laddr and c.laddr.port in ports})


def start_resource_sampler(
    platform_pids: Sequence[int], metrics_urls: Sequence[str] = ()
) -> BackgroundSampler | None:
    """Samples the platform and the generator over the load window (see resources_sampler): the
    platform from its Prometheus endpoints when ``metrics_urls`` are given, else its local processes."""
    if metrics_urls:
        platform = prometheus_source(metrics_urls)
    elif platform_pids:
        platform = psutil_source(platform_pids)
    else:
        return None
    return BackgroundSampler({"platform": platform, "generator": generator_source()}).start()


# -------------------------------------------------------------------- the run
@dataclass(eq=False)
class LoadRun:
    """A finished (or running) load run: its users, their open connections and the metrics."""

    config: LoadConfig
    metrics: LoadMetrics
    load_users: list[LoadUser] = field(default_factory=list)
    ws_url: str = ""
    phase: str = "starting"
    # called on the engine loop with each new phase ("connecting", "sending", "done"); e.g. a
    # benchmark reads the generator's CPU when sending starts; must not block
    on_phase: Callable[[str], None] | None = None

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        if self.on_phase is not None:
            self.on_phase(phase)

    @property
    def users(self) -> list[TestUser]:
        return [lu.user for lu in self.load_users]

    @property
    def open_connections(self) -> int:
        return sum(1 for lu in self.load_users if lu.connection is not None and not lu.connection.closed)

    def progress(self) -> str:
        m = self.metrics
        p95 = m.percentile("completion", 95.0)
        p95_text = f"{p95 * 1e3:.0f} ms" if p95 is not None else "n/a"
        total = self.config.users * self.config.messages
        if self.phase == "logging in":
            logged_in = sum(1 for lu in self.load_users if lu.user.tokens is not None)
            return f"[{m.name}] logging in: {logged_in}/{len(self.load_users)} users have a token"
        return (f"[{m.name}] {self.phase}: {m.connected}/{self.config.users} connected, "
                f"{m.completed}/{total} messages done, {m.error_count} errors, completion p95 {p95_text}")

    async def close(self) -> None:
        for lu in self.load_users:
            lu.closing = True
        await asyncio.gather(*(lu.connection.close() for lu in self.load_users if lu.connection),
                             return_exceptions=True)

    def __str__(self) -> str:
        m = self.metrics
        return f"LoadRun({m.name}, {len(self.load_users)} users, {m.completed} completed)"

    __repr__ = __str__


async def _connect(run: LoadRun, lu: LoadUser, delay: float) -> None:
    if delay:
        await asyncio.sleep(delay)
    conn = LoadConnection(lu.user, f"{lu.user.label}#load", run.ws_url, run.config.keep_frames)
    conn.load_user = lu
    started = time.monotonic()
    try:
        await conn.open(lu.user.access_token, open_timeout=run.config.connect_timeout)
    except AssertionError as exc:
        run.metrics.record_error("connect_failed", str(exc), lu.stats)
        return
    run.metrics.record_connect(lu.user.label, time.monotonic() - started)
    # the load run resolves runs by callback: no per-frame waiter notification task
    conn._condition = None  # type: ignore[assignment]
    lu.connection = conn
    assert conn._reader is not None
    conn._reader.add_done_callback(lambda _task: lu.on_closed())


async def _closed_user(run: LoadRun, lu: LoadUser, delay: float) -> None:
    if delay:
        await asyncio.sleep(delay)
    cfg = run.config
    for index in range(cfg.messages):
        if lu.connection is None or lu.connection.closed:
            run.metrics.record_error("not_connected", f"user '{lu.user.label}' has no open connection",
                                     lu.stats)
            return
        if index and cfg.think_time:
            await asyncio.sleep(cfg.think_time)
        if not cfg.same_thread:
            lu.thread_id = None
        # closed model: the message is due now, when the previous one ended (and the think time passed)
        pending = await lu.send(time.monotonic())
        await lu.wait(pending, cfg.message_timeout)


async def _open_schedule(run: LoadRun) -> None:
    cfg = run.config
    live = [lu for lu in run.load_users if lu.connection is not None]
    if not live:
        return
    total = cfg.users * cfg.messages
    interval = 1.0 / cfg.rate
    start = time.monotonic()
    waits = []
    for index in range(total):
        intended = start + index * interval
        delay = intended - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lu = live[index % len(live)]
        if lu.connection is None or lu.connection.closed:
            run.metrics.record_error("not_connected", f"user '{lu.user.label}' has no open connection",
                                     lu.stats)
            continue
        # latency counts from `intended`, so a late send (a busy loop, a slow server) is charged
        waits.append((lu, await lu.send(intended)))
    await asyncio.gather(*(lu.wait(pending, cfg.message_timeout) for lu, pending in waits))


async def run_load(
    config: LoadConfig,
    auth_url: str,
    ws_url: str,
    users: Sequence[TestUser] | None = None,
    platform_pids: Sequence[int] = (),
    run: LoadRun | None = None,
    previous: LoadRun | None = None,
    metrics_urls: Sequence[str] = (),
    platform_cores: int | None = None,
) -> LoadRun:
    """Drive one load run on the engine loop; the connections stay open (``run.close()``).

    With ``previous``, its users and their open connections carry on into this
    run (a new round of a sustained test), measured in fresh metrics.  With
    ``metrics_urls`` the platform's CPU and memory come from its Prometheus
    endpoints; CPU percentages then need ``platform_cores`` (else not measured).
    """
    config.validate()
    metrics = run.metrics if run else LoadMetrics(config.name, config.scenario or None)
    metrics.scenario = config.scenario or metrics.scenario
    run = run or LoadRun(config, metrics)
    run.ws_url = ws_url
    if previous is not None:
        run.load_users = previous.load_users
        for lu in run.load_users:
            lu.metrics, lu.stats = metrics, metrics.user(lu.user.label)
            if lu.connection is not None and not lu.connection.closed:
                metrics.connected += 1
        config.users = len(run.load_users)
    else:
        prefix = re.sub(r"[^A-Za-z0-9]", "", config.name)[:10] or "load"
        test_users = list(users) if users else new_load_users(config.users, prefix)
        config.users = len(test_users)
        owners = {u.canary: u.label for u in test_users}
        run.load_users = [LoadUser(bounded(u, config.keep_frames), metrics.user(u.label), metrics, owners,
                                   config.messages_per_thread) for u in test_users]
        run.set_phase("logging in")
        await _login_all(run, auth_url)

    gc_quiet = GcQuiet(config.freeze_gc, config.quiet_gc, len(run.load_users))
    sampler = start_resource_sampler(platform_pids, metrics_urls)
    remote = (list(metrics_urls), platform_cores) if metrics_urls else None
    cpu_process, cpu_engine, wall = time.process_time(), time.thread_time(), time.monotonic()
    metrics.started_mono = wall
    metrics.started_at = time.time()
    try:
        run.set_phase("connecting")
        ramp = config.ramp_up
        todo = [lu for lu in run.load_users if lu.connection is None or lu.connection.closed]
        n = max(len(todo), 1)
        if config.start_together or config.model is LoadModel.OPEN:
            await asyncio.gather(*(_connect(run, lu, ramp * i / n) for i, lu in enumerate(todo)))
            gc_quiet.start()
            run.set_phase("sending")
            if config.model is LoadModel.OPEN:
                await _open_schedule(run)
            else:
                await asyncio.gather(*(_closed_user(run, lu, 0.0) for lu in run.load_users))
        else:
            async def user_flow(lu: LoadUser, delay: float) -> None:
                if lu in todo:
                    await _connect(run, lu, delay)
                await _closed_user(run, lu, 0.0 if lu in todo else delay)

            gc_quiet.start()
            run.set_phase("sending")
            await asyncio.gather(*(user_flow(lu, ramp * i / n) for i, lu in enumerate(run.load_users)))
    finally:
        gc_quiet.stop(metrics)
        metrics.finish()
        _settle_latency_basis(config, metrics)
        run.set_phase("done")
        spent = (time.process_time() - cpu_process, time.thread_time() - cpu_engine, time.monotonic() - wall)
    if sampler:
        # the resource window is at least sampler.min_window long: wait for it without blocking the loop
        try:
            await asyncio.sleep(sampler.remaining())
        finally:
            sampler.stop()
            _record_resources(metrics, sampler, platform_pids, *spent, remote=remote)
    else:
        _record_resources(metrics, sampler, platform_pids, *spent, remote=remote)
    return run


def bounded(user: TestUser, keep_frames: int) -> TestUser:
    """Give a load user bounded frame and id stores (the oracle reads them like lists and sets)."""
    user.frames = FrameTail(keep_frames, user.frames)  # type: ignore[assignment]
    limit = max(keep_frames, 16)
    user.run_ids = RecentSet(limit, user.run_ids)  # type: ignore[assignment]
    user.thread_ids = RecentSet(limit, user.thread_ids)  # type: ignore[assignment]
    return user


class GcWatch:
    """Times every garbage collection while a run sends (``gc.callbacks``): its pauses land in the tail."""

    def __init__(self) -> None:
        self.started = 0.0
        self.max_pause = 0.0
        self.total = 0.0
        self.counts = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        pause = time.perf_counter() - self.started
        self.total += pause
        self.max_pause = max(self.max_pause, pause)
        self.counts[info.get("generation", 0)] += 1

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self)

    def record(self, metrics: LoadMetrics) -> None:
        metrics.info["gc_collections"] = {f"gen{g}": n for g, n in enumerate(self.counts)}
        metrics.info["gc_max_pause_ms"] = round(self.max_pause * 1e3, 3)
        metrics.info["gc_total_pause_ms"] = round(self.total * 1e3, 3)


class GcQuiet:
    """Keeps the garbage collector out of the latencies while a run sends messages.

    * ``freeze``: ``gc.collect(); gc.freeze()`` once every user is connected; collections then
      skip everything built during setup (users, sockets, histograms).
    * ``quiet``: no automatic collection while messages flow.  The steady state of a load run
      makes no cyclic garbage (every frame, run and message is freed by reference counting;
      ``gc_cyclic_garbage`` in the run's info counts what the collection after the run found),
      so the collector would only scan the live asyncio objects of the runs in flight, about 30
      per user, and its pauses (measured up to 0.6 s at 1,000 users on a busy 2-core machine)
      would land in the latency tail.  A guard on the engine loop checks the collector's count
      every second and collects when more than ``50,000 + 50 per user`` tracked objects piled
      up (cyclic garbage from an unexpected path: memory stays bounded; the pause is timed
      like any other).  After the run the collector is back on and one collection runs.

    Every collection while messages flow is timed (:class:`GcWatch`).  Runs may overlap on
    one engine loop: the first one in switches the collector off, the last one out back on.
    Example: ``q = GcQuiet(True, True, users=100); q.start(); ...; q.stop(metrics)``.
    """

    GUARD_INTERVAL = 1.0
    _depth = 0
    _was_enabled = True

    def __init__(self, freeze: bool, quiet: bool, users: int) -> None:
        self.freeze, self.quiet = freeze, quiet
        self.limit = 50_000 + 50 * max(users, 0)
        self.watch = GcWatch()
        self.started = False
        self.guard_collections = 0
        self._guard: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.freeze:
            gc.collect()
            gc.freeze()
        if self.quiet:
            if GcQuiet._depth == 0:
                GcQuiet._was_enabled = gc.isenabled()
                gc.disable()
            GcQuiet._depth += 1
            self._guard = asyncio.get_running_loop().call_later(self.GUARD_INTERVAL, self._check)
        self.watch.__enter__()  # from the first message on: the collections whose pauses reach the latencies

    def _check(self) -> None:
        if gc.get_count()[0] > self.limit:
            self.guard_collections += 1
            gc.collect()
        self._guard = asyncio.get_running_loop().call_later(self.GUARD_INTERVAL, self._check)

    def stop(self, metrics: LoadMetrics) -> None:
        if not self.started:
            return
        self.started = False
        self.watch.__exit__()
        self.watch.record(metrics)
        if self._guard is not None:
            self._guard.cancel()
        if self.quiet:
            GcQuiet._depth -= 1
            if GcQuiet._depth == 0 and GcQuiet._was_enabled:
                gc.enable()
            metrics.info["gc_guard_collections"] = self.guard_collections
        if self.freeze or self.quiet:
            # the collection after the run (still frozen: it scans only what the run built)
            metrics.info["gc_cyclic_garbage"] = gc.collect()
        if self.freeze:
            gc.unfreeze()
        metrics.info["gc_mode"] = (
            ("gc.freeze() after setup; " if self.freeze else "")
            + ("no automatic collection while sending (guard at "
               f"{self.limit:,} objects), one collection after" if self.quiet else "automatic collection"))


def _settle_latency_basis(config: LoadConfig, metrics: LoadMetrics) -> None:
    """Say how latency was measured; correct the closed model for coordinated omission when it can hide."""
    if config.model is LoadModel.OPEN:
        metrics.latency_basis = (f"open model: from the intended send time of each message "
                                 f"({config.rate:g} messages/s), no correction needed")
    elif config.messages <= 1:
        metrics.latency_basis = ("one message per user, sent at its intended moment: latency from the "
                                 "intended send time, nothing to correct")
    else:
        median = metrics.percentile("completion", 50.0)
        if median is None:
            metrics.latency_basis = "closed model: nothing completed, nothing to correct"
            return
        metrics.correct_for_coordinated_omission(config.think_time + median)
    metrics.info["latency_basis"] = metrics.latency_basis


async def _login_all(run: LoadRun, auth_url: str) -> None:
    loop = asyncio.get_running_loop()
    todo = [lu.user for lu in run.load_users if lu.user.tokens is None]
    with concurrent.futures.ThreadPoolExecutor(run.config.login_concurrency, "crosstalk-login") as pool:
        outcomes = await asyncio.gather(
            *(loop.run_in_executor(pool, register_and_login, auth_url, u) for u in todo),
            return_exceptions=True,
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            run.metrics.record_error("login_failed", str(outcome))
    run.load_users = [lu for lu in run.load_users if lu.user.tokens is not None]


def foreign_canaries(run: LoadRun) -> list[str]:
    """Every foreign canary found in the load users' frames (checked on arrival; examples kept).

    Empty when no user received another user's canary.
    """
    m = run.metrics
    count = m.violations.get("foreign_canary", 0)
    examples = [e for e in m.violation_examples if "canary" in e]
    if count > len(examples):
        return [*examples, f"... {count - len(examples)} more"]
    return examples[:count]


def _record_resources(metrics: LoadMetrics, sampler: BackgroundSampler | None, pids: Sequence[int],
                      process_cpu: float, engine_cpu: float, wall: float,
                      remote: tuple[list[str], int | None] | None = None) -> None:
    res = metrics.resources
    res.cores = psutil.cpu_count() or 1
    res.platform_pids = [] if remote else list(pids)
    res.generator_cpu_seconds = process_cpu
    res.engine_cpu_seconds = engine_cpu
    res.generator_core_pct = 100.0 * engine_cpu / wall if wall > 0 else None
    if remote is not None:
        res.platform_source = f"Prometheus: {', '.join(remote[0])}"
    elif pids:
        res.platform_source = f"local processes {', '.join(map(str, pids))} (psutil)"
    if sampler is not None:
        if remote is not None:
            res.cores = remote[1] or 1  # the platform's machine, not this one
        record_series(res, sampler)
        if remote is not None and not remote[1]:
            # a CPU % needs the platform's core count: without it there is no CPU verdict
            res.platform_cpu_mean_pct = res.platform_cpu_p90_pct = res.platform_cpu_peak_pct = None
            metrics.info["platform_cpu"] = "not measured: set PLATFORM_CORES to the platform's core count"
        if remote is not None and sampler.series["platform"].failures:
            metrics.warnings.append(
                f"{sampler.series['platform'].failures} Prometheus scrape(s) failed: "
                f"{sampler.series['platform'].last_error}")
    if metrics.completed:
        metrics.info["generator_cpu_ms_per_message"] = round(1000.0 * process_cpu / metrics.completed, 4)
    if res.generator_core_pct is not None and res.generator_core_pct > GENERATOR_BUSY_PCT:
        metrics.warnings.append(
            f"The load generator's engine thread used {res.generator_core_pct:.0f}% of a core: the "
            "generator, not the platform, may be the bottleneck; spread the users over pabot processes."
        )


def write_summary(metrics: LoadMetrics, path: str | os.PathLike[str]) -> str:
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(metrics.summary(), indent=2, default=str))
    return os.fspath(path)

"""A user's WebSocket connections on the engine loop.

Every coroutine here runs on the engine loop (``crosstalk.engine``).  Keyword
libraries call them through ``get_engine().run(...)``; a load generator running
on the same loop can ``await`` them directly.

* :class:`UserConnection` - one socket of one user: a background receive task
  time-stamps every frame on arrival, appends it to the connection and to
  ``user.frames`` and wakes the waiters; run handles are resolved from the
  ``client_message_id`` the client chose to the ``run_id`` the server chose.
* :class:`RunHandle` - one message sent and the events of the run it started.
* :class:`ConnectionRefused` - the handshake was refused (HTTP status) or the
  socket was closed before any data (close code).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from . import profile as target_profile
from . import registry
from .errors import CrosstalkError
from .model import Frame, TestUser
from .sequence import TERMINAL_TYPES, answer_of, summarize

DEFAULT_MAX_SIZE = 2**22
RECENT_FRAMES = 5


class ConnectionRefused(CrosstalkError):
    """The server refused the socket: ``status`` is the HTTP status, ``close_code`` the WebSocket code."""

    def __init__(self, message: str, status: int | None = None, close_code: int | None = None):
        super().__init__(message)
        self.status = status
        self.close_code = close_code


def _now() -> tuple[float, float]:
    return time.time(), time.monotonic()


def _lookup(data: Mapping[str, Any] | None, path: str) -> Any:
    """Value at a dotted path (``payload.agent``) or a sentinel when absent."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def frame_matches(frame: Frame, event_type: str | None, fields: Mapping[str, Any]) -> bool:
    """True when an incoming frame has ``event_type`` (if given) and every dotted field equal (as text)."""
    if frame.direction != "in" or frame.data is None:
        return False
    if event_type and frame.type != event_type:
        return False
    for path, expected in fields.items():
        value = _lookup(frame.data, path)
        if value is _MISSING or (value != expected and str(value) != str(expected)):
            return False
    return True


def describe_frames(frames: Iterable[Frame], limit: int = RECENT_FRAMES) -> str:
    frames = list(frames)[-limit:]
    if not frames:
        return "nothing"
    return "; ".join(
        f"[{'<-' if f.direction == 'in' else '->'} {f.type or 'non-JSON'}"
        f"{' seq ' + str(f.data.get('seq')) if f.data and f.data.get('seq') else ''}] "
        f"{summarize(f.data, f.raw, 70)}"
        for f in frames
    )


@dataclass(eq=False)
class RunHandle:
    """One sent ``user_message`` and the run the server started for it."""

    user: TestUser
    connection: str
    client_message_id: str
    content: str
    requested_thread_id: str | None
    sent_at: float
    sent_monotonic: float
    run_id: str | None = None
    thread_id: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    event_frames: list[Frame] = field(default_factory=list)
    rejection: dict[str, Any] | None = None  # an `error` frame answering this message
    first_event_monotonic: float | None = None
    done_monotonic: float | None = None
    echo_token: str = ""  # what the answer must repeat when the profile recognises answers by canary echo

    @property
    def done(self) -> bool:
        return self.done_monotonic is not None

    @property
    def status(self) -> str:
        if self.rejection is not None:
            return "rejected"
        if not self.events:
            return "pending"
        last = self.events[-1].get("type")
        if last == "agent_completed":
            return "completed"
        if last == "agent_error":
            return "failed"
        return "running"

    @property
    def answer(self) -> str | None:
        return answer_of(self.events)

    @property
    def time_to_first_event(self) -> float | None:
        if self.first_event_monotonic is None:
            return None
        return self.first_event_monotonic - self.sent_monotonic

    @property
    def time_to_done(self) -> float | None:
        if self.done_monotonic is None:
            return None
        return self.done_monotonic - self.sent_monotonic

    @property
    def name(self) -> str:
        return self.run_id or f"client_message_id {self.client_message_id}"

    def __str__(self) -> str:
        return f"Run({self.user.label}, {self.name}, {self.status})"

    __repr__ = __str__


class UserConnection:
    """One open WebSocket of one user, read continuously in the background."""

    def __init__(self, user: TestUser, label: str, url: str):
        self.user = user
        self.label = label
        self.url = url
        self.ws: ClientConnection | None = None
        self.frames: list[Frame] = []
        self.runs: dict[str, RunHandle] = {}
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.closed = False
        self.opened_at: float | None = None
        # called with each Frame as it is recorded, on the engine loop (e.g. a load generator's
        # latency recorder); must not block
        self.listeners: list[Callable[[Frame], None]] = []
        # contract check of every received frame (crosstalk.contract): returns None or one line naming
        # the frame and the JSON path; the waits below fail on the first unreported violation
        self.validate: Callable[[Frame], str | None] | None = None
        self.violations: list[str] = []
        self._violations_reported = 0
        self._condition: asyncio.Condition | None = None
        self._waiters = 0
        self._reader: asyncio.Task[None] | None = None

    def __str__(self) -> str:
        state = f"closed {self.close_code}" if self.closed else "open"
        return f"Connection({self.label}, {state}, {len(self.frames)} frames)"

    __repr__ = __str__

    # ------------------------------------------------------------------ open / close
    async def open(
        self,
        token: str | None,
        origin: str | None = None,
        open_timeout: float = 10.0,
        extra_headers: Mapping[str, str] | None = None,
    ) -> UserConnection:
        """Open the socket (``Authorization: Bearer token`` unless ``token`` is None) and start reading.

        Raises :class:`ConnectionRefused` when the handshake is refused.
        """
        self._condition = asyncio.Condition()
        headers = dict(extra_headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self.ws = await connect(
                self.url,
                additional_headers=headers,
                origin=origin,  # type: ignore[arg-type]
                compression=None,
                open_timeout=open_timeout,
                max_size=DEFAULT_MAX_SIZE,
                ping_interval=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode("utf-8", "replace")[:200] if exc.response.body else ""
            raise ConnectionRefused(
                f"WebSocket handshake of user '{self.user.label}' to {self.url} was refused "
                f"with HTTP {status}"
                f"{': ' + body if body else ''}",
                status=status,
            ) from None
        except (InvalidHandshake, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectionRefused(
                f"WebSocket of user '{self.user.label}' could not connect to {self.url}: {reason}"
            ) from None
        self.opened_at = time.time()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"read {self.label}")
        registry.register(self, owner=type(self).__name__, kind=registry.WEBSOCKET, label=self.label,
                          user_id=self.user.user_id, is_open=lambda: not self.closed,
                          close=self.close_blocking)
        return self

    def close_blocking(self) -> None:
        """Close from a thread other than the engine's (Robot's; the registry's end-of-suite cleanup)."""
        from .engine import get_engine

        get_engine().run(self.close(), 10.0)

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                at, mono = _now()
                raw = message if isinstance(message, str) else message.decode("utf-8", "replace")
                self._record("in", raw, at, mono)
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.close_reason = f"receive failed: {exc}"
        finally:
            await self._reader_ended()

    async def _reader_ended(self) -> None:
        """The socket stopped delivering: mark the connection closed, keep why, wake the waiters."""
        self.closed = True
        if self.ws is not None and self.close_code is None:
            self.close_code = self.ws.close_code
            self.close_reason = self.close_reason or (self.ws.close_reason or "")
        await self._notify()

    async def _notify(self) -> None:
        if self._condition is None:
            return
        async with self._condition:
            self._condition.notify_all()

    def _record(self, direction: str, raw: str, at: float, mono: float) -> Frame:
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            parsed = None
        data = parsed if isinstance(parsed, dict) else None
        if data is not None and direction == "in":
            # one canonical shape for every check downstream; frame.raw keeps the platform's own
            data = target_profile.current().canonical_event(data)
        frame = Frame(
            direction=direction,
            at=at,
            monotonic=mono,
            raw=raw,
            data=data,  # type: ignore[arg-type]
            connection=self.label,
        )
        self.frames.append(frame)
        self.user.frames.append(frame)
        if direction == "in" and self.validate is not None:
            problem = self.validate(frame)
            if problem:
                self.violations.append(problem)
        if direction == "in" and data is not None:
            self._route(frame, data, mono)
        for listener in self.listeners:
            listener(frame)
        # wake waiters without blocking the reader on the lock, and only when someone waits
        if self._waiters and self._condition is not None:
            asyncio.get_running_loop().create_task(self._notify())
        return frame

    def _route(self, frame: Frame, data: dict[str, Any], mono: float) -> None:
        run = self.runs.get(str(data.get("client_message_id")))
        if run is None:
            return
        if data.get("type") == "error":
            run.rejection = data
            run.done_monotonic = mono
            return
        if run.run_id is None and data.get("run_id"):
            run.run_id = str(data["run_id"])
            self.user.run_ids.add(run.run_id)
        if run.thread_id is None and data.get("thread_id"):
            run.thread_id = str(data["thread_id"])
            self.user.thread_ids.add(run.thread_id)
        if run.first_event_monotonic is None:
            run.first_event_monotonic = mono
        run.events.append(data)
        run.event_frames.append(frame)
        if data.get("type") in TERMINAL_TYPES:
            run.done_monotonic = mono

    async def close(self, timeout: float = 5.0) -> None:
        """Close the socket (code 1000) and wait for the reader to finish."""
        if self.ws is not None and not self.closed:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed, OSError):
                await asyncio.wait_for(self.ws.close(), timeout)
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
        self.closed = True
        registry.unregister(self)

    # ------------------------------------------------------------------ send
    def _open_socket(self) -> ClientConnection:
        """The socket to send on; AssertionError naming connection, user and close code when it is closed."""
        if self.ws is None or self.closed:
            raise AssertionError(
                f"Connection '{self.label}' of user '{self.user.label}' is closed "
                f"(code {self.close_code}{', ' + self.close_reason if self.close_reason else ''}): "
                "reconnect first."
            )
        return self.ws

    async def _transmit(self, ws: ClientConnection, text: str | bytes) -> None:
        """Send one frame; AssertionError naming connection, user and close code if the socket closed."""
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise AssertionError(
                f"Sending on connection '{self.label}' of user '{self.user.label}' failed: closed "
                f"with code {exc.rcvd.code if exc.rcvd else None}."
            ) from None

    async def send_raw(self, text: str | bytes) -> Frame:
        """Send text as it is (bytes as a binary frame) and record it as an outgoing frame."""
        ws = self._open_socket()
        at, mono = _now()
        shown = text if isinstance(text, str) else text.decode("utf-8", "replace")
        frame = self._record("out", shown, at, mono)
        await self._transmit(ws, text)
        return frame

    async def send_message(
        self, content: str, thread_id: str | None = None, client_message_id: str | None = None,
        echo_token: str | None = None,
    ) -> RunHandle:
        """Send a ``user_message`` and return its run handle (the run id arrives with ``agent_started``).

        When the target profile recognises answers by canary echo, the message asks
        for ``echo_token`` (default: the user's canary and a per-message suffix) to be
        repeated; the handle remembers it.
        """
        cmid = client_message_id or f"cm-{uuid.uuid4().hex}"
        token = echo_token or f"{self.user.canary}-{cmid[-6:]}"
        content = target_profile.current().message_content(content, token)
        body: dict[str, Any] = {"type": "user_message", "content": content, "client_message_id": cmid}
        if thread_id:
            body["thread_id"] = thread_id
        return await self.send_frame(body, echo_token=token)

    async def send_frame(self, body: Mapping[str, Any], echo_token: str = "") -> RunHandle:
        """Send a client frame that carries a ``client_message_id`` (with any other fields, e.g. forged
        identity fields) as it is, and track the run it starts like `send_message` does."""
        cmid = str(body["client_message_id"])
        at, mono = _now()
        run = RunHandle(self.user, self.label, cmid, str(body.get("content", "")), body.get("thread_id"),
                        at, mono, echo_token=echo_token)
        self.runs[cmid] = run  # registered before sending: the first event may arrive at once
        await self.send_raw(json.dumps(dict(body)))
        return run

    # ------------------------------------------------------------------ waits
    async def wait_until(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every frame) or the socket closes.

        Returns the predicate's value, or None on timeout / close (the caller
        words the failure, it knows what was awaited).
        """
        assert self._condition is not None, "connection was never opened"
        deadline = time.monotonic() + timeout
        self._waiters += 1
        try:
            async with self._condition:
                while True:
                    value = predicate()
                    if value:
                        return value
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.closed:
                        return None
                    try:
                        await asyncio.wait_for(self._condition.wait(), remaining)
                    except asyncio.TimeoutError:
                        return predicate() or None
        finally:
            self._waiters -= 1

    async def next_frame(self, start: int, timeout: float) -> Frame | None:
        """The first incoming frame (JSON or not) from index ``start``; None on timeout or close."""
        return await self.wait_until(
            lambda: next((f for f in self.frames[start:] if f.direction == "in"), None), timeout
        )

    def find_frame(self, event_type: str | None, fields: Mapping[str, Any], start: int = 0) -> Frame | None:
        for frame in self.frames[start:]:
            if frame_matches(frame, event_type, fields):
                return frame
        return None

    async def wait_for_event(
        self, event_type: str | None, fields: Mapping[str, Any], timeout: float, start: int = 0
    ) -> Frame:
        """The first incoming frame from index ``start`` matching type and fields.

        Raises AssertionError naming the user, what was awaited and the last frames on timeout.
        """
        frame = await self.wait_until(lambda: self.find_frame(event_type, fields, start), timeout)
        if frame is None:
            wanted = event_type or "any event"
            if fields:
                wanted += " with " + ", ".join(f"{k}={v}" for k, v in fields.items())
            raise AssertionError(
                f"User '{self.user.label}' (connection {self.label}) did not receive {wanted} within "
                f"{timeout:g} s{self._closed_note()}. Last frames: {describe_frames(self.frames)}"
            )
        self.raise_violations()
        return frame

    async def wait_for_run(self, run: RunHandle, timeout: float) -> RunHandle:
        """Wait until the run ended (completed, failed or rejected); AssertionError naming it on timeout."""
        ended = await self.wait_until(lambda: run.done, timeout)
        if not ended:
            awaited = "agent_completed or agent_error"
            got = describe_frames(run.event_frames) if run.event_frames else "no event of this run"
            raise AssertionError(
                f"User '{self.user.label}' (connection {self.label}): run {run.name} did not finish within "
                f"{timeout:g} s{self._closed_note()}: awaited {awaited}, this run got {got}. "
                f"Last frames on the connection: {describe_frames(self.frames)}"
            )
        self.raise_violations()
        return run

    def mark_violations_reported(self) -> None:
        """Every violation so far was reported (e.g. by a contract keyword): waits raise only newer ones."""
        self._violations_reported = len(self.violations)

    def raise_violations(self) -> None:
        """AssertionError naming the contract violations received since the last call (if any)."""
        new = self.violations[self._violations_reported:]
        self._violations_reported = len(self.violations)
        if new:
            more = f" (and {len(new) - 1} more)" if len(new) > 1 else ""
            raise AssertionError(
                f"User '{self.user.label}' (connection {self.label}) received a frame that breaks the "
                f"platform contract: {new[0]}{more}"
            )

    async def wait_closed(self, timeout: float) -> bool:
        return bool(await self.wait_until(lambda: self.closed, timeout)) or self.closed

    def _closed_note(self) -> str:
        broken = f" (a received frame broke the contract: {self.violations[-1]})" if self.violations else ""
        if not self.closed:
            return broken
        reason = f" '{self.close_reason}'" if self.close_reason else ""
        return f" (the connection was closed with code {self.close_code}{reason}){broken}"


async def open_connection(
    user: TestUser,
    label: str,
    url: str,
    token: str | None,
    origin: str | None = None,
    open_timeout: float = 10.0,
) -> UserConnection:
    """Open one connection for ``user``; see :meth:`UserConnection.open`."""
    return await UserConnection(user, label, url).open(token, origin, open_timeout)


# ---------------------------------------------------------------------- blocking helpers
# For keyword code and for threads released together by a barrier (crosstalk.races.fire_at_once):
# each call blocks its own thread while the connection lives on the engine loop.
# The engine call gets a little longer than the wait inside it, so the wait's own, better
# worded timeout message is the one the user sees (Chat and Security use it too).
GRACE = 5.0


def open_blocking(user: TestUser, label: str, url: str, timeout: float = 10.0) -> UserConnection:
    """Open a connection of ``user`` with its current access token and wait for the handshake."""
    from .engine import get_engine

    return get_engine().run(UserConnection(user, label, url).open(user.access_token, None, timeout),
                            timeout + GRACE)


def exchange(connection: UserConnection, body: Mapping[str, Any], timeout: float) -> RunHandle:
    """Send one client frame (`UserConnection.send_frame`) and wait until its run ended: completed,
    failed, or refused with an ``error`` frame (``run.rejection``)."""
    from .engine import get_engine

    async def send_and_wait() -> RunHandle:
        return await connection.wait_for_run(await connection.send_frame(body), timeout)

    return get_engine().run(send_and_wait(), timeout + GRACE)


def start_thread(user: TestUser, url: str, title: str, timeout: float = 20.0) -> str:
    """``user`` opens a socket, asks ``title`` (which starts a thread) and waits for the answer;
    returns the new thread id (also added to ``user.thread_ids``)."""
    from .engine import get_engine

    async def ask() -> RunHandle:
        connection = UserConnection(user, f"{user.label}#thread", url)
        await connection.open(user.access_token, None, timeout)
        try:
            return await connection.wait_for_run(await connection.send_message(title), timeout)
        finally:
            await connection.close()

    run = get_engine().run(ask(), timeout * 2 + GRACE)
    if run.status != "completed" or not run.thread_id:
        raise CrosstalkError(f"{user.label}: starting a thread ended {run.status}: "
                             f"{describe_frames(run.event_frames) if run.event_frames else run.rejection}")
    return run.thread_id


async def gather_strict(coros: Iterable[Any]) -> list[Any]:
    """``asyncio.gather`` that cancels the siblings when one fails (3.10-safe, no TaskGroup)."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

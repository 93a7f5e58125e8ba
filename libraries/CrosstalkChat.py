"""Robot Framework library: WebSocket chat with agents, many users and connections at once."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from crosstalk import context, htmllog, oracle
from crosstalk import profile as target_profile
from crosstalk.connection import (
    GRACE,
    ConnectionRefused,
    RunHandle,
    UserConnection,
    describe_frames,
    gather_strict,
)
from crosstalk.contract import ContractError, FrameContract, frame_contract
from crosstalk.engine import get_engine
from crosstalk.errors import CrosstalkError
from crosstalk.model import TestUser
from crosstalk.registry import Cleanup
from crosstalk.secrets import mask
from crosstalk.sequence import check_run_events, matches_pattern, types_of
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library
from robot.api.exceptions import SkipExecution
from robot.api.types import Secret  # RF >= 7.4 (requirements.txt)


def _seconds(timeout: timedelta) -> float:
    return timeout.total_seconds()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


@library(scope="SUITE", version=VERSION, auto_keywords=False, listener=Cleanup())
class CrosstalkChat:
    """WebSocket chat with the platform's agents, for many users and connections at once.

    Connections are opened on a background asyncio loop of their own and stay
    open across keywords and tests until `Disconnect` / `Disconnect All`.
    Every frame is received and time-stamped on arrival, even while no keyword
    runs, and recorded on the connection and on its `TestUser` (``frames``).

    A keyword that takes a ``target`` accepts a connection (returned by
    `Connect`), a `TestUser` (meaning that user's most recent connection) or a
    connection label such as ``alice#1``.

    `Send Message` returns a run handle; the run id is filled in when
    ``agent_started`` arrives.  Waits take ``timedelta`` timeouts (``10s``,
    ``1 min``) and, when they fail, name the user, the run, what was awaited and
    the last frames that arrived instead.
    """

    def __init__(self) -> None:
        self._connections: dict[str, UserConnection] = {}
        self._counts: dict[int, int] = {}
        self._contract: FrameContract | bool | None = False  # False: not loaded yet

    # ------------------------------------------------------------------ helpers
    def _ws_url(self) -> str:
        url = context.current().get("WS_URL")
        if not url:
            raise AssertionError(
                "WS_URL is not set: run 'Start Or Attach Platform' in the suite setup first."
            )
        return str(url)

    def _new_label(self, user: TestUser) -> str:
        while True:
            count = self._counts.get(user.serial, 0) + 1
            self._counts[user.serial] = count
            label = f"{user.label}#{count}"
            if label not in self._connections:
                return label

    def _resolve(self, target: UserConnection | TestUser | str) -> UserConnection:
        if isinstance(target, UserConnection):
            return target
        if isinstance(target, TestUser):
            mine = [c for c in self._connections.values() if c.user is target]
            if not mine:
                raise AssertionError(f"User '{target.label}' has no connection: connect first.")
            open_ones = [c for c in mine if not c.closed]
            return (open_ones or mine)[-1]
        if str(target) in self._connections:
            return self._connections[str(target)]
        known = ", ".join(self._connections) or "none"
        raise AssertionError(f"No connection labelled '{target}'. Known connections: {known}.")

    def _run(self, coro, timeout: float) -> Any:
        try:
            return get_engine().run(coro, timeout + GRACE)
        except TimeoutError as exc:
            raise AssertionError(
                f"WebSocket operation did not finish in {timeout + GRACE:g} s: {exc}"
            ) from None

    def _frame_contract(self) -> FrameContract | None:
        """The AsyncAPI contract received frames are checked against (``${FRAME_SCHEMA}``: path or off)."""
        if self._contract is False:
            setting = context.current().values.get("FRAME_SCHEMA") or None
            try:
                self._contract = frame_contract(setting)
            except ContractError as exc:
                raise AssertionError(f"FRAME_SCHEMA: {exc}") from None
        return self._contract or None

    def _open(self, user: TestUser, label: str, token: str | None, origin: str | None, timeout: float) -> Any:
        # the URL and the contract are read here, in Robot's thread; the coroutine runs on the engine loop
        connection = UserConnection(user, label, self._ws_url())
        contract = self._frame_contract()
        if contract is not None:
            connection.validate = lambda frame: contract.check(frame.data, frame.raw)
        return connection.open(token, origin, timeout)

    # ------------------------------------------------------------------ connect
    @keyword("Connect")
    def connect(
        self,
        user: TestUser,
        token: Secret | str | None = None,
        origin: str | None = None,
        timeout: timedelta = timedelta(seconds=10),
        label: str | None = None,
    ) -> UserConnection:
        """Open a WebSocket for ``user`` with its access token (or ``token``) and return the connection.

        ``origin`` sets the ``Origin`` header (none by default).  A refused
        handshake fails with the HTTP status; use `Connection Should Be Refused`
        to assert a refusal instead.  Several connections per user are fine:
        they are labelled ``<user>#1``, ``<user>#2``, ... unless ``label`` names
        the connection (then other keywords accept that label as target).

        Example:
        | ${conn} = | Connect | ${alice} |
        | ${phone} = | Connect | ${alice} | origin=http://localhost | label=alice-phone |
        | Send Message | alice-phone | Hello from my phone |
        """
        plain = str(getattr(token, "value", token)) if token is not None else user.access_token
        if label and label in self._connections:
            raise ValueError(f"A connection labelled '{label}' already exists: choose another label.")
        label = label or self._new_label(user)
        seconds = _seconds(timeout)
        connection = self._run(self._open(user, label, plain, origin, seconds), seconds)
        self._connections[label] = connection
        logger.info(f"{label} connected to {connection.url} with token {mask(plain)}")
        return connection

    @keyword("Connect Users")
    def connect_users(self, users: list[TestUser], timeout: timedelta = timedelta(seconds=20)) -> list:
        """Open one WebSocket per user, all at the same time; returns the connections in user order.

        Example:
        | ${connections} = | Connect Users | ${users} |
        """
        users = list(users)
        labels = [self._new_label(user) for user in users]
        seconds = _seconds(timeout)

        async def open_all() -> list:
            return await asyncio.gather(
                *(
                    self._open(u, label, u.access_token, None, seconds)
                    for u, label in zip(users, labels, strict=True)
                ),
                return_exceptions=True,
            )

        results = self._run(open_all(), seconds)
        connections = [r for r in results if isinstance(r, UserConnection)]
        for connection in connections:
            # registered even when a sibling failed, so Disconnect All closes them
            self._connections[connection.label] = connection
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise AssertionError(
                f"{len(failures)} of {len(users)} users could not connect; first: {failures[0]}"
            )
        logger.info(f"{len(connections)} users connected: {', '.join(labels)}")
        return connections

    @keyword("Connection Should Be Refused")
    def connection_should_be_refused(
        self,
        user: TestUser,
        token: Secret | str | None = None,
        origin: str | None = None,
        status: int = 401,
        close_code: int = 4401,
        timeout: timedelta = timedelta(seconds=5),
    ) -> str:
        """Fail unless the WebSocket handshake is refused with HTTP ``status``, or the socket is
        closed with ``close_code`` before any data arrives within ``timeout``.

        ``token`` defaults to the user's current access token; an empty ``token`` sends
        no ``Authorization`` header at all.  ``origin`` sets the ``Origin`` header
        (``null`` is sent as it is).  Returns a short description of how it was refused.

        Example:
        | Connection Should Be Refused | ${alice} | token=${revoked} |
        | Connection Should Be Refused | ${alice} | token=${EMPTY} |
        | Connection Should Be Refused | ${alice} | origin=https://evil.example | status=403 |
        """
        plain = str(getattr(token, "value", token)) if token is not None else user.access_token
        seconds = _seconds(timeout)
        label = f"{user.label}#refused"
        url = self._ws_url()
        credentials = f"token {mask(plain)}" if plain else "no Authorization header"

        async def attempt() -> str:
            try:
                connection = await UserConnection(user, label, url).open(plain or None, origin, seconds)
            except ConnectionRefused as refused:
                if refused.status == status:
                    return f"handshake refused with HTTP {status}"
                raise AssertionError(
                    f"WebSocket of user '{user.label}' with {credentials} was refused, "
                    f"but not with HTTP "
                    f"{status}: {refused}"
                ) from None
            closed = await connection.wait_closed(seconds)
            data = [f for f in connection.frames if f.direction == "in"]
            await connection.close()
            if closed and connection.close_code == close_code and not data:
                return f"closed with code {close_code} before any data"
            got = f"closed with code {connection.close_code}" if closed else f"still open after {seconds:g} s"
            raise AssertionError(
                f"WebSocket of user '{user.label}' with {credentials}"
                f"{' and Origin ' + origin if origin else ''} was accepted: expected HTTP {status} or close "
                f"code {close_code} before any data, got {got}; frames received: {describe_frames(data)}"
            )

        outcome = self._run(attempt(), seconds * 2)
        logger.info(f"WebSocket of {user.label} refused as expected: {outcome}")
        return outcome

    @keyword("Reconnect")
    def reconnect(
        self,
        target: UserConnection | TestUser | str,
        token: Secret | str | None = None,
        timeout: timedelta = timedelta(seconds=10),
    ) -> UserConnection:
        """Close the connection (if still open) and open a new one for the same user; returns the new one.

        Uses the user's current access token unless ``token`` is given.

        Example:
        | ${conn} = | Reconnect | ${alice} |
        """
        old = self._resolve(target)
        self._run(old.close(), 5.0)
        return self.connect(old.user, token=token, timeout=timeout)

    @keyword("Disconnect")
    def disconnect(self, target: UserConnection | TestUser | str) -> None:
        """Close one connection normally (code 1000).

        Example:
        | Disconnect | ${alice} |
        """
        connection = self._resolve(target)
        self._run(connection.close(), 5.0)
        logger.info(f"{connection.label} disconnected ({len(connection.frames)} frames).")

    @keyword("Disconnect All")
    def disconnect_all(self, log_transcripts: bool = True) -> None:
        """Close every connection opened by this library and log each user's transcript.

        Meant for suite teardown.

        Example:
        | Suite Teardown | Disconnect All |
        """
        connections = list(self._connections.values())
        if not connections:
            return
        if log_transcripts:
            self.log_transcripts()
        self._run(gather_strict(c.close() for c in connections), 10.0)
        self._connections.clear()
        self._counts.clear()

    @keyword("Log Transcripts")
    def log_transcripts(self, users: list[TestUser] | None = None) -> None:
        """Log each user's frames in and out (time, direction, connection, type, run, seq, summary) as tables.

        Without ``users``: every user with a connection from this library.

        Example:
        | Log Transcripts | ${users} |
        """
        if users is None:
            seen: dict[int, TestUser] = {}
            for connection in self._connections.values():
                seen.setdefault(connection.user.serial, connection.user)
            users = list(seen.values())
        for user in users:
            if user.frames:
                logger.info(htmllog.transcript(user), html=True)

    # ------------------------------------------------------------------ send
    @keyword("Send Message")
    def send_message(
        self, target: UserConnection | TestUser | str, content: str, thread: RunHandle | str | None = None
    ) -> RunHandle:
        """Send a ``user_message`` and return its run handle.

        ``thread`` continues a thread: a thread id, or a run handle whose thread
        to continue.  Without it the platform starts a new thread.

        Example:
        | ${run} = | Send Message | ${alice} | What does my plan cost? |
        | ${next} = | Send Message | ${alice} | And next month? | thread=${run} |
        """
        connection = self._resolve(target)
        thread_id = thread.thread_id if isinstance(thread, RunHandle) else thread
        if isinstance(thread, RunHandle) and not thread_id:
            raise AssertionError(
                f"Run {thread.name} has no thread id yet: wait for it before continuing its thread."
            )
        run = self._run(connection.send_message(content, thread_id or None), 10.0)
        logger.info(
            f"{connection.label} sent {content!r} (client_message_id {run.client_message_id}"
            f"{', thread ' + thread_id if thread_id else ''})"
        )
        return run

    @staticmethod
    def _fill(content: str, user: TestUser) -> str:
        try:
            return content.format(label=user.label, email=user.email, canary=user.canary)
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"Message template {content!r} has an unknown placeholder {exc}: use {{label}}, {{email}} "
                "or {canary} (double other braces)."
            ) from None

    @keyword("Send Message From Each User")
    def send_message_from_each_user(self, users: list[TestUser], content: str) -> list:
        """Every user sends one message at the same moment, on their latest connection; returns the runs.

        ``content`` may hold ``{label}``, ``{email}`` and ``{canary}``, filled in per
        user, so each user's message is unique and carries their canary.

        Example:
        | ${runs} = | Send Message From Each User | ${users} | What does my plan cost? {canary} |
        | Wait For Runs Of All Users | ${runs} |
        """
        connections = [self._resolve(user) for user in users]
        texts = [self._fill(content, u) for u in users]
        runs = self._run(
            gather_strict(c.send_message(text) for c, text in zip(connections, texts, strict=True)), 10.0
        )
        logger.info(f"{len(runs)} users sent a message at once: {', '.join(u.label for u in users)}")
        return runs

    @keyword("Send Follow-Up From Each User")
    def send_follow_up_from_each_user(self, runs: list[RunHandle], content: str) -> list:
        """Each run's user sends ``content`` into that run's thread, all at once; returns the new runs.

        ``content`` may hold ``{label}``, ``{email}`` and ``{canary}`` like `Send Message From Each User`.

        Example:
        | ${firsts} = | Send Message From Each User | ${users} | My budget is private {canary} |
        | ${again} = | Send Follow-Up From Each User | ${firsts} | What budget did I mention? {canary} |
        """
        runs = list(runs)
        missing = [f"{run.user.label}'s run {run.name}" for run in runs if not run.thread_id]
        if missing:
            raise AssertionError(f"No thread to continue for {', '.join(missing)}: the server never named "
                                 "one; wait for the first runs before following up.")
        connections = [self._resolve(run.user) for run in runs]
        texts = [self._fill(content, run.user) for run in runs]
        sends = (c.send_message(text, run.thread_id)
                 for c, text, run in zip(connections, texts, runs, strict=True))
        sent = self._run(gather_strict(sends), 10.0)
        logger.info(f"{len(sent)} users followed up in their threads at once: "
                    f"{', '.join(run.user.label for run in runs)}")
        return sent

    @keyword("Send Raw Frame")
    def send_raw_frame(self, target: UserConnection | TestUser | str, text: str) -> None:
        """Send ``text`` exactly as given (malformed JSON, unknown types, huge frames...).

        Example:
        | Send Raw Frame | ${alice} | {not json |
        | Wait For Event | ${alice} | error | code=invalid_json |
        """
        connection = self._resolve(target)
        self._run(connection.send_raw(text), 10.0)
        logger.info(f"{connection.label} sent raw frame of {len(text)} characters")

    @keyword("Send Raw Frames")
    def send_raw_frames(self, target: UserConnection | TestUser | str, frames: list[str]) -> None:
        """Send every text of ``frames`` back to back in one go (no keyword overhead between them).

        For floods and rate-limit checks, where sending one frame per keyword
        call would be too slow to exceed a per-second limit on a busy machine.

        Example:
        | ${frames} = | Create List | {not json | {"type": "bogus"} |
        | Send Raw Frames | ${mallory} | ${frames} |
        """
        connection = self._resolve(target)
        frames = [str(frame) for frame in frames]

        async def send_all() -> float:
            started = asyncio.get_running_loop().time()
            for frame in frames:
                await connection.send_raw(frame)
            return asyncio.get_running_loop().time() - started

        elapsed = self._run(send_all(), 30.0)
        logger.info(f"{connection.label} sent {len(frames)} raw frames in {elapsed * 1000:.0f} ms")

    @keyword("Send Message Flood")
    def send_message_flood(self, target: UserConnection | TestUser | str, count: int) -> None:
        """Send ``count`` ``user_message`` frames back to back in one engine call, without awaiting answers.

        Example:
        | Send Message Flood | ${mallory} | 120 |
        """
        self.send_raw_frames(target, [json.dumps({"type": "user_message", "client_message_id": f"flood-{n}",
                                                  "content": f"flood {n}"}) for n in range(int(count))])

    @keyword("Flood Should Have Been Rate Limited")
    def flood_should_have_been_rate_limited(
        self, target: UserConnection | TestUser | str, timeout: timedelta = timedelta(seconds=5),
    ) -> None:
        """Fail unless the flooding connection received an ``error`` frame with code ``rate_limited``.

        Example:
        | Send Message Flood | ${mallory} | 120 |
        | Flood Should Have Been Rate Limited | ${mallory} |
        """
        connection = self._resolve(target)
        try:
            self.wait_for_event(connection, "error", timeout, code="rate_limited")
        except AssertionError as error:
            flood = sum(1 for f in connection.frames if f.direction == "out" and '"flood-' in f.raw)
            raise CrosstalkError(
                f"{connection.user.label} sent {flood} messages back to back and got no rate_limited error: "
                f"not throttled ({error})") from None

    @keyword("Oversized Frame Should Be Refused By The Server")
    def oversized_frame_should_be_refused_by_the_server(
        self, target: UserConnection | TestUser | str, size: int, timeout: timedelta = timedelta(seconds=10),
    ) -> str:
        """Send a ``user_message`` of ``size`` bytes; fail unless it gets a ``frame_too_large`` error or
        the socket is closed with 1009 (message too big).  Returns how it was refused.

        Example:
        | Oversized Frame Should Be Refused By The Server | ${alice} | 100000 | timeout=10s |
        """
        connection = self._resolve(target)
        self.send_raw_frame(connection, json.dumps(
            {"type": "user_message", "client_message_id": "oversized-1", "content": "A" * int(size)}))
        try:
            self.wait_for_event(connection, "error", timeout, code="frame_too_large")
            return "error frame_too_large"
        except AssertionError as error:
            refused_by_error = str(error)
        try:
            self.connection_should_be_closed_with_code(connection, 1009, timeout=timedelta(seconds=1))
        except AssertionError:
            raise CrosstalkError(
                f"{connection.user.label}'s {int(size)}-byte frame was neither refused with frame_too_large "
                f"nor closed with 1009: {refused_by_error}") from None
        return "closed with 1009"

    @keyword("Chat Should Still Work")
    def chat_should_still_work(
        self, target: UserConnection | TestUser | str, timeout: timedelta = timedelta(seconds=10),
    ) -> str:
        """The user can still chat: on the same socket, or on a new one when the server closed it
        (after an oversized frame, 1009 is a legitimate answer).  Returns the answer.

        Example:
        | Chat Should Still Work | ${alice} | timeout=10s |
        """
        try:
            run = self.send_message(target, "still there?")
        except AssertionError:
            run = self.send_message(self.reconnect(target), "still there?")
        return self.wait_for_run_to_complete(run, timeout)

    # ------------------------------------------------------------------ wait
    def _connection_of(self, run: RunHandle) -> UserConnection:
        return self._resolve(run.connection)

    @keyword("Wait For Run To End")
    def wait_for_run_to_end(self, run: RunHandle, timeout: timedelta = timedelta(seconds=30)) -> RunHandle:
        """Wait until the run ends in any way (completed, failed, rejected); returns the run handle.

        Example:
        | ${run} = | Wait For Run To End | ${run} |
        | Should Be Equal | ${run.status} | failed |
        """
        seconds = _seconds(timeout)
        return self._run(self._connection_of(run).wait_for_run(run, seconds), seconds)

    @keyword("Wait For Run To Complete")
    def wait_for_run_to_complete(self, run: RunHandle, timeout: timedelta = timedelta(seconds=30)) -> str:
        """Wait for ``agent_completed`` of the run and return the answer (``payload.response``).

        Fails at once if the run ends in ``agent_error`` or is rejected with an ``error`` frame.

        Example:
        | ${answer} = | Wait For Run To Complete | ${run} | timeout=20s |
        | Should Contain | ${answer} | What does my plan cost? |
        """
        self.wait_for_run_to_end(run, timeout)
        if run.status != "completed":
            raise AssertionError(
                f"Run {run.name} of user '{run.user.label}' ended {run.status} instead of completed: "
                f"{describe_frames(run.event_frames) if run.event_frames else run.rejection}"
            )
        logger.info(f"{run.user.label} run {run.run_id} completed in {_ms(run.time_to_done)}: {run.answer}")
        return str(run.answer)

    @keyword("Wait For Run To Fail")
    def wait_for_run_to_fail(self, run: RunHandle, timeout: timedelta = timedelta(seconds=30)) -> str:
        """Wait for ``agent_error`` of the run and return its message; fails if the run completes instead.

        Example:
        | ${run} = | Send Message | ${alice} | please [[fail]] |
        | Wait For Run To Fail | ${run} |
        """
        self.wait_for_run_to_end(run, timeout)
        if run.status != "failed":
            raise AssertionError(
                f"Run {run.name} of user '{run.user.label}' ended {run.status}, expected agent_error: "
                f"{describe_frames(run.event_frames) if run.event_frames else run.rejection}"
            )
        return str((run.events[-1].get("payload") or {}).get("message"))

    def _wait_for_all(self, runs: list[RunHandle], seconds: float) -> list[str]:
        """Wait for every run at once; what went wrong (time-outs, contract breaks), in run order."""

        async def wait_all() -> list:
            return await asyncio.gather(
                *(self._connection_of(run).wait_for_run(run, seconds) for run in runs), return_exceptions=True
            )

        results = self._run(wait_all(), seconds)
        return [str(r) for r in results if isinstance(r, BaseException)]

    @staticmethod
    def _did_not_complete(runs: list[RunHandle], problems: list[str], expected: str = "completed") -> None:
        problems = problems + [
            f"Run {run.name} of user '{run.user.label}' ended {run.status}: "
            f"{describe_frames(run.event_frames)}"
            for run in runs if run.done and run.status != expected
        ]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise AssertionError(
                f"{len(problems)} of {len(runs)} runs did not complete{more}: " + " | ".join(problems[:3])
            )

    @keyword("Wait For Runs Of All Users")
    def wait_for_runs_of_all_users(
        self, runs: list[RunHandle], timeout: timedelta = timedelta(seconds=60)
    ) -> list:
        """Wait for every run at once; return their answers in the same order and log per-user timings.

        Fails listing every run that did not complete (user, run, what arrived instead).

        Example:
        | ${answers} = | Wait For Runs Of All Users | ${runs} | timeout=1 min |
        """
        runs = list(runs)
        problems = self._wait_for_all(runs, _seconds(timeout))
        self.log_run_timings(runs)
        self._did_not_complete(runs, problems)
        return [run.answer for run in runs]

    @keyword("Runs Should Complete With Their Own Answers")
    def runs_should_complete_with_their_own_answers(
        self,
        runs: list[RunHandle],
        timeout: timedelta = timedelta(seconds=60),
        failing: RunHandle | None = None,
    ) -> None:
        """Wait for every run at once: each completes, its events follow the contract and its answer is
        the answer to its own message; ``failing``, if given, must end in ``agent_error`` meanwhile.

        Whatever the runs did, the events every involved user received are checked first: an event
        that reached the wrong user is the likelier cause of a run that never completes, so that is
        the failure reported (``Isolation violated: bob received alice's event: ...``).

        Example:
        | ${runs} = | Send Message From Each User | ${users} | What does my plan cost? |
        | Runs Should Complete With Their Own Answers | ${runs} | timeout=20s |
        | Runs Should Complete With Their Own Answers | ${others} | failing=${broken_run} |
        """
        runs = list(runs)
        everyone = [*runs, failing] if failing is not None else runs
        problems = self._wait_for_all(everyone, _seconds(timeout))
        self.log_run_timings(runs)
        users = list({run.user.serial: run.user for run in everyone}.values())
        misrouted = oracle.failure_message([oracle.events_reach_only_their_user(users)])
        if misrouted:
            unfinished = f" (and {len(problems)} runs did not finish)" if problems else ""
            raise AssertionError(misrouted + unfinished)
        if failing is not None and failing.done and failing.status != "failed":
            raise AssertionError(
                f"Run {failing.name} of user '{failing.user.label}' ended {failing.status}, expected "
                f"agent_error: "
                f"{describe_frames(failing.event_frames) if failing.event_frames else failing.rejection}")
        self._did_not_complete(runs, problems)
        for run in runs:
            self.run_events_should_be_in_order(run)
            self.answer_should_be_the_askers_own(
                run, f"The answer to {run.user.label} is not the answer to {run.user.label}'s own message")

    @keyword("Log Run Timings")
    def log_run_timings(self, runs: list[RunHandle]) -> None:
        """Log a table of runs: user, run id, status, time to first event, time to completion.

        Example:
        | Log Run Timings | ${runs} |
        """
        logger.info(
            htmllog.table(
                ("user", "connection", "run", "status", "events", "first event", "completed"),
                (
                    (
                        r.user.label,
                        r.connection,
                        r.run_id or r.client_message_id,
                        r.status,
                        len(r.events),
                        _ms(r.time_to_first_event),
                        _ms(r.time_to_done),
                    )
                    for r in runs
                ),
                f"{len(runs)} runs",
            ),
            html=True,
        )

    @keyword("Wait For Event")
    def wait_for_event(
        self,
        target: UserConnection | TestUser | str,
        event_type: str,
        timeout: timedelta = timedelta(seconds=10),
        new_only: bool = False,
        **fields: str,
    ) -> dict:
        """Wait for an incoming frame of ``event_type`` whose fields equal the given values; return it.

        Fields are dotted paths into the frame (``payload.agent=security``,
        ``code=invalid_json``), compared as text.  Frames that arrived before the
        call count too, unless ``new_only`` is true.

        Example:
        | ${event} = | Wait For Event | ${alice} | agent_thinking | payload.handoff_from=triage |
        | Wait For Event | ${alice} | error | code=thread_not_found | timeout=5s |
        | Wait For Event | ${alice} | error | new_only=True | code=rate_limited |
        """
        connection = self._resolve(target)
        seconds = _seconds(timeout)
        start = len(connection.frames) if new_only else 0
        frame = self._run(connection.wait_for_event(event_type, fields, seconds, start), seconds)
        return dict(frame.data or {})

    @keyword("Connection Should Be Closed With Code")
    def connection_should_be_closed_with_code(
        self, target: UserConnection | TestUser | str, code: int, timeout: timedelta = timedelta(seconds=10)
    ) -> None:
        """Wait until the server closes the connection and fail unless the close code is ``code``.

        Example:
        | Log Out | ${alice} |
        | Connection Should Be Closed With Code | ${conn} | 4401 |
        """
        connection = self._resolve(target)
        seconds = _seconds(timeout)
        closed = self._run(connection.wait_closed(seconds), seconds)
        if not closed:
            raise AssertionError(
                f"Connection {connection.label} of user '{connection.user.label}' was still open "
                f"after {seconds:g} s, "
                f"expected close code {code}. Last frames: {describe_frames(connection.frames)}"
            )
        if connection.close_code != code:
            raise AssertionError(
                f"Connection {connection.label} of user '{connection.user.label}' closed with code "
                f"{connection.close_code} '{connection.close_reason}', expected {code}."
            )

    # ------------------------------------------------------------------ runs
    @keyword("Run Events Should Be In Order")
    def run_events_should_be_in_order(self, run: RunHandle) -> None:
        """Fail unless the run's events follow the contract.

        ``agent_started``, ``agent_thinking``+, (``tool_executing``,
        ``tool_completed``)+ with matching ``tool_call_id``, then
        ``agent_completed`` or ``agent_error``; ``seq`` 1..n contiguous; one run id.

        Example:
        | Run Events Should Be In Order | ${run} |
        """
        problems = check_run_events(run.events)
        if problems:
            raise AssertionError(
                f"Events of run {run.name} of user '{run.user.label}' break the contract: "
                + "; ".join(problems)
            )
        logger.info(f"Run {run.name}: {' → '.join(types_of(run.events))}")

    @keyword("Event Sequence Should Be")
    def event_sequence_should_be(self, run: RunHandle, pattern: str) -> None:
        """Fail unless the run's event types, in arrival order, match ``pattern`` exactly.

        Type names (``agent_started`` or short ``started``), ``( )``, ``|`` and
        the repeaters ``+ * ?``.

        Example:
        | Event Sequence Should Be | ${run} | started thinking+ (tool_executing tool_completed)+ completed |
        """
        if not matches_pattern(run.events, pattern):
            raise AssertionError(
                f"Events of run {run.name} of user '{run.user.label}' are {types_of(run.events)}, "
                f"which does not match '{pattern}'."
            )

    @keyword("Get Run Events")
    def get_run_events(self, run: RunHandle, event_type: str | None = None) -> list:
        """The run's events (frames as dictionaries) in arrival order, optionally only of ``event_type``.

        Example:
        | ${thinking} = | Get Run Events | ${run} | agent_thinking |
        """
        return [dict(e) for e in run.events if event_type is None or e.get("type") == event_type]

    @keyword("Answer Should Be The Asker's Own")
    def answer_should_be_the_askers_own(self, run: RunHandle, message: str | None = None) -> None:
        """Fail unless the run's answer is recognisably the answer to this run's own message.

        How is declared by the target profile (``answers.recognition``): ``quote``
        (the answer quotes the message), ``canary_echo`` (the message asked for a
        token with the user's canary to be repeated; the answer must carry it). With
        ``none`` the test is skipped: the answer cannot be attributed.

        Example:
        | Answer Should Be The Asker's Own | ${run} |
        """
        profile = target_profile.current()
        evidence = profile.answer_evidence(run.content, run.echo_token)
        if evidence is None:
            raise SkipExecution(
                f"Profile {profile.name} declares answers.recognition none: no evidence ties an answer to "
                "its asker; set quote or canary_echo in the profile (PROFILE) to enable this check."
            )
        answer = run.answer
        if answer is None:
            raise AssertionError(f"Run {run.name} of user '{run.user.label}' has no answer ({run.status}).")
        if evidence not in answer:
            how = "quote the message" if profile.answer_recognition.value == "quote" else \
                f"repeat the reference {evidence}"
            raise AssertionError(
                message or f"The answer to {run.user.label}'s run {run.name} does not {how}: {answer[:200]!r}"
            )

    @keyword("Run Should Recall")
    def run_should_recall(self, run: RunHandle, earlier: RunHandle | str, message: str | None = None) -> None:
        """Fail unless the run saw an earlier message of its thread.

        With answers recognised by quote, the answer must quote the earlier message;
        otherwise (the answer's wording is the model's own) a tool result of the run
        must hold it, anywhere in its JSON.

        Example:
        | Run Should Recall | ${follow_up} | ${first} |
        """
        text = earlier.content if isinstance(earlier, RunHandle) else str(earlier)
        profile = target_profile.current()
        if profile.answer_recognition is target_profile.AnswerRecognition.QUOTE:
            if text not in (run.answer or ""):
                raise AssertionError(message or f"The answer to {run.user.label}'s run {run.name} does not "
                                     f"recall the earlier message {text[:80]!r}: {run.answer!r}")
            return
        for event in run.events:
            result = (event.get("payload") or {}).get("result")
            if event.get("type") == "tool_completed" and any(
                text in value for value in target_profile.walk_values(result)
            ):
                return
        raise AssertionError(message or f"No tool result of {run.user.label}'s run {run.name} holds the "
                             f"earlier message {text[:80]!r}")

    @keyword("Runs Should Recall")
    def runs_should_recall(self, runs: list[RunHandle], earlier: list[RunHandle]) -> None:
        """Fail unless each run saw the earlier run of the same position (its user's own earlier message).

        Every pair is checked; the failure lists each run that did not recall its own earlier message.

        Example:
        | Runs Should Recall | ${follow_ups} | ${firsts} |
        """
        runs, earlier = list(runs), list(earlier)
        if len(runs) != len(earlier):
            raise ValueError(f"Runs Should Recall pairs runs with earlier runs: got {len(runs)} runs and "
                             f"{len(earlier)} earlier runs.")
        problems = []
        for run, first in zip(runs, earlier, strict=True):
            try:
                self.run_should_recall(run, first,
                                       f"The tool did not find {first.user.label}'s own earlier message")
            except AssertionError as exc:
                problems.append(str(exc))
        if problems:
            raise AssertionError(f"{len(problems)} of {len(runs)} runs did not recall their own earlier "
                                 f"message: {' | '.join(problems[:3])}")

    @keyword("Run Should Hand Off")
    def run_should_hand_off(self, run: RunHandle, to: str | None = None) -> str:
        """Fail unless the run's events show triage handing off to a specialist; returns the specialist.

        ``to`` names the expected specialist (``cost``, ``security``, ``performance``, ``general``).

        Example:
        | Run Should Hand Off | ${run} | to=cost |
        """
        agents = [str((e.get("payload") or {}).get("agent")) for e in run.events]
        handoffs = [e for e in run.events if (e.get("payload") or {}).get("handoff_from")]
        if not agents or agents[0] != "triage" or not handoffs:
            raise AssertionError(
                f"Run {run.name} of user '{run.user.label}' shows no handoff from triage: "
                f"agents in order {agents}."
            )
        specialist = str(handoffs[0]["payload"]["agent"])
        if to and specialist != to:
            raise AssertionError(
                f"Run {run.name} of user '{run.user.label}' was handed to '{specialist}', expected '{to}'."
            )
        return specialist

    @keyword("Received Frames Should Match The Contract")
    def received_frames_should_match_the_contract(
        self, target: UserConnection | TestUser | str | None = None
    ) -> int:
        """Fail unless every frame received on ``target`` (default: every connection of this library)
        validated against the AsyncAPI contract (``docs/contract/asyncapi.yaml`` or ``${FRAME_SCHEMA}``).

        Waits already fail on the first violation they see; this keyword lists all
        of them, each naming the frame and the JSON path.  Returns the number of
        frames checked.

        Example:
        | Received Frames Should Match The Contract | ${alice} |
        """
        if self._frame_contract() is None:
            raise SkipExecution("frame validation is off (FRAME_SCHEMA=off): no frame was checked")
        connections = [self._resolve(target)] if target is not None else list(self._connections.values())
        checked = sum(1 for c in connections for f in c.frames if f.direction == "in")
        problems = [f"{c.label}: {v}" for c in connections for v in c.violations]
        for connection in connections:
            connection.mark_violations_reported()
        if problems:
            raise AssertionError(
                f"{len(problems)} of {checked} received frame(s) break the platform contract: "
                + " | ".join(problems[:5])
            )
        logger.info(f"{checked} received frame(s) on {len(connections)} connection(s) match the contract "
                    f"({self._frame_contract().source})")
        return checked

    @keyword("Get Connection Frames")
    def get_connection_frames(
        self, target: UserConnection | TestUser | str, event_type: str | None = None
    ) -> list:
        """Incoming frames of the connection as dictionaries, optionally only of ``event_type``.

        Example:
        | ${errors} = | Get Connection Frames | ${alice} | error |
        """
        connection = self._resolve(target)
        return [
            dict(f.data)
            for f in connection.frames
            if f.direction == "in" and f.data is not None and (event_type is None or f.type == event_type)
        ]

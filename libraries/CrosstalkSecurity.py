"""What the security suite needs beyond CrosstalkAuth and CrosstalkChat.

The target's declared limits, connection entries the backend keeps after a socket
closed (``/metrics``), and hostile input; session records in Redis are counted by
``CrosstalkStores`` (``Get Session Count``).  Nothing here is a client of its own:
sockets are Chat's `UserConnection` on the one engine (registered, so the cleanup
listener and the isolation oracle see them), HTTP goes through the keep-alive
session of `CrosstalkAuth` (``crosstalk.httpretry``), Redis through
``crosstalk.stores`` and waits through ``crosstalk.assertions``.  A refused handshake is
Chat's `Connection Should Be Refused`; a refresh race is Auth's
`Refresh Concurrently With One Token`.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import requests
from assertionengine import AssertionOperator
from crosstalk import assertions, context, hostile, htmllog, testhooks
from crosstalk import profile as target_profile
from crosstalk.connection import GRACE, ConnectionRefused, UserConnection, describe_frames
from crosstalk.context import Capability
from crosstalk.engine import get_engine
from crosstalk.httpretry import pooled_session
from crosstalk.model import Frame, TestUser
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library
from robot.libraries.BuiltIn import BuiltIn

DEFAULT_TIMEOUT = timedelta(seconds=10)


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


@library(scope="SUITE", version=VERSION, doc_format="ROBOT", auto_keywords=False)
class CrosstalkSecurity:
    """Security checks the other Crosstalk libraries do not cover: the target's limits, connection
    entries leaked by the backend (`Get Leaked Connection Count`), hostile input.  A refused handshake
    is CrosstalkChat's `Connection Should Be Refused`, a refresh race CrosstalkAuth's
    `Refresh Concurrently With One Token`.

    Tokens are never logged in full; users are `TestUser` objects from `CrosstalkAuth`.
    """

    # ------------------------------------------------------------ limits (target profile)
    @staticmethod
    def _limit(name: str, variable: str) -> int:
        profile = target_profile.current()
        value = profile.limit(name)
        if not value:
            BuiltIn().skip(f"No {variable} given and profile {profile.name} declares no limits.{name}: "
                           f"set one of them to test this limit.")
        return int(value)

    @keyword("Oversized Frame Size")
    def oversized_frame_size(self, configured: str | int | None = None) -> int:
        """Bytes of a frame that must be refused: ``configured`` if given, else twice the profile's limit.

        Skips the test when neither ``OVERSIZED_FRAME_BYTES`` nor the profile's
        ``limits.max_frame_bytes`` is known.

        Example:
        | ${bytes} = | Oversized Frame Size | ${OVERSIZED_FRAME_BYTES} |
        """
        if configured not in (None, ""):
            return int(configured)
        size = 2 * self._limit("max_frame_bytes", "OVERSIZED_FRAME_BYTES")
        logger.info(f"Oversized frame: {size} bytes (twice the profile's max_frame_bytes)")
        return size

    @keyword("Flood Size")
    def flood_size(self, configured: str | int | None = None) -> int:
        """Messages in a flood that must be throttled: ``configured``, else 3 x the profile's burst (min 60).

        Skips the test when neither ``FLOOD_SIZE`` nor the profile's ``limits.rate_limit_burst``
        is known.

        Example:
        | ${count} = | Flood Size | ${FLOOD_SIZE} |
        """
        if configured not in (None, ""):
            return int(configured)
        size = max(60, 3 * self._limit("rate_limit_burst", "FLOOD_SIZE"))
        logger.info(f"Flood: {size} messages (three times the profile's rate_limit_burst)")
        return size

    # ------------------------------------------------------------ sessions and server resources
    @keyword
    def get_leaked_connection_count(
        self,
        backend_url: str,
        assertion_operator: AssertionOperator | None = None,
        assertion_expected: Any = None,
        message: str | None = None,
        timeout: timedelta = timedelta(0),
    ) -> int:
        """Returns the connection entries the server still holds for sockets that are already closed;
        with an operator, asserts it, retrying until ``timeout``.

        The count is ``tracked_connections - active_websockets`` from the reference's ``/metrics``
        JSON, else ``crosstalk_connections_tracked - crosstalk_websockets_active`` from the
        platform's Prometheus endpoint; skips (``needs:metrics``) when neither is served.
        Other users' sockets may be opening and closing meanwhile (pabot), so compare with a
        count taken before yours opened.

        Example:
        | ${before} = | Get Leaked Connection Count | ${BACKEND_URL} |
        | Get Leaked Connection Count | ${BACKEND_URL} | < | ${before + 10} | timeout=5s |
        """
        return assertions.assert_that(
            lambda: self._leaked_connections(backend_url), assertion_operator, assertion_expected,
            what="entries the server holds for closed sockets (tracked_connections - active_websockets)",
            timeout=timeout, message=message)

    @staticmethod
    def _leaked_connections(backend_url: str) -> int:
        leaked, source = testhooks.leaked_connection_count(backend_url, context.current().get("METRICS_URL"))
        if leaked is None:
            context.current().skip(
                Capability.METRICS, f"needs metrics: the server's connection entries cannot be read: "
                f"{source} (contract rule CAP-2: {testhooks.TRACKED} and {testhooks.ACTIVE} gauges)")
        return int(leaked)

    @keyword
    def hostile_requests_should_be_refused_cleanly(
        self, user: TestUser, auth_url: str, backend_url: str, thread_id: str,
        max_body_bytes: int = 1024 * 1024, depth: int = 10000, timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        """Sends hostile bodies to every write endpoint; fails on any 5xx, dropped connection or body
        naming internals (exception classes, tracebacks, drivers).

        Each of ``POST /auth/register``, ``/auth/login``, ``/auth/refresh``, ``/auth/logout``
        (without a token), ``/threads/{thread_id}/messages`` and ``/workspaces`` (with ``user``'s
        token) gets: a body 4 x ``max_body_bytes`` (the target's declared limit), JSON nested
        ``depth`` deep, wrong field types, a non-object, invalid UTF-8, NUL characters and lone
        surrogates.  Any 4xx is a clean refusal; a 2xx is reported, not failed (the contract leaves
        limits to the target).  Logs a table: input, status, body.

        Example:
        | Hostile Requests Should Be Refused Cleanly | ${alice} | ${AUTH_URL} | ${BACKEND_URL} | ${thread} |
        """
        auth, backend = auth_url.rstrip("/"), backend_url.rstrip("/")
        endpoints = [
            hostile.RestEndpoint("POST /auth/register", "POST", f"{auth}/auth/register",
                                 ("email", "password")),
            hostile.RestEndpoint("POST /auth/login", "POST", f"{auth}/auth/login", ("email", "password")),
            hostile.RestEndpoint("POST /auth/refresh", "POST", f"{auth}/auth/refresh", ("refresh_token",)),
            hostile.RestEndpoint("POST /auth/logout", "POST", f"{auth}/auth/logout", ()),
            hostile.RestEndpoint("POST /threads/{id}/messages", "POST",
                                 f"{backend}/threads/{thread_id}/messages", ("content",), bearer=True),
            hostile.RestEndpoint("POST /workspaces", "POST", f"{backend}/workspaces", ("name",), bearer=True),
        ]
        probes = hostile.rest_probes(endpoints, 4 * max_body_bytes, depth, uuid.uuid4().hex[:8])
        rows, problems = [], []
        with pooled_session() as session:
            for probe in probes:
                headers = {"Content-Type": "application/json"}
                if probe.endpoint.bearer:
                    headers["Authorization"] = f"Bearer {user.access_token}"
                try:
                    response = session.request(probe.endpoint.method, probe.endpoint.url, data=probe.body,
                                               headers=headers, timeout=_s(timeout))
                    status, body = response.status_code, response.text
                except requests.RequestException as error:
                    status, body = None, f"(no answer: {type(error).__name__})"
                    session.close()  # a broken keep-alive connection must not poison the next probe
                problem = hostile.judge_answer(status, body, probe.oversized)
                rows.append((probe.label, "-" if status is None else str(status), _short(body, 120), problem))
                if problem:
                    problems.append(f"{probe.label}: {problem}: {_short(body, 120)}")
        logger.info(_table(["input", "status", "body", "verdict"], rows, f"{len(probes)} hostile requests"),
                    html=True)
        if problems:
            raise AssertionError(f"{len(problems)} of {len(probes)} hostile requests were not refused "
                                 "cleanly: " + "; ".join(problems[:6]))
        accepted = [r for r in rows if r[1].startswith("2")]
        logger.info(f"{len(probes)} hostile requests: no 5xx, no internals; "
                    f"{len(accepted)} accepted with 2xx.")

    @keyword
    def hostile_frames_should_be_refused_cleanly(
        self, user: TestUser, ws_url: str, depth: int = 20000, timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        """Sends hostile frames on a new socket of ``user``: each must get an error frame (not
        ``internal_error``, naming no internals) with the socket kept open, and an ordinary message
        sent afterwards on the same socket must complete.

        Frames: JSON nested ``depth`` deep (under the contract's 64 KB frame limit by default),
        a binary frame with invalid UTF-8, NUL and lone surrogates, wrong field types, non-objects.

        Example:
        | Hostile Frames Should Be Refused Cleanly | ${alice} | ${WS_URL} |
        """
        seconds = _s(timeout)
        frames = hostile.frame_probes(depth, uuid.uuid4().hex[:8])
        connection = UserConnection(user, f"{user.label}#hostile", ws_url)
        rows, problems = get_engine().run(_throw_frames(connection, frames, seconds),
                                          seconds * (len(frames) + 2) + GRACE)
        logger.info(_table(["frame", "answer", "verdict"], rows, f"{len(frames)} hostile frames"), html=True)
        if problems:
            raise AssertionError(f"{user.label}'s hostile frames were not refused cleanly: "
                                 + "; ".join(problems[:6]))
        logger.info(f"{len(rows)} hostile frames each got an error frame; the socket stayed usable.")


async def _throw_frames(
    connection: UserConnection, frames: list[hostile.FrameProbe], seconds: float,
) -> tuple[list[tuple], list[str]]:
    """On the engine loop: each hostile frame and the server's answer to it, then one ordinary run."""
    try:
        await connection.open(connection.user.access_token, open_timeout=seconds)
    except ConnectionRefused as refused:
        raise AssertionError(f"{connection.user.label} could not open a WebSocket: {refused}") from None
    rows: list[tuple] = []
    problems: list[str] = []
    try:
        for frame in frames:
            start = len(connection.frames)
            await connection.send_raw(frame.payload)
            answer = await connection.next_frame(start, seconds)
            closed = (f"code {connection.close_code} {connection.close_reason!r}"
                      if connection.closed else None)
            data = _as_object(answer)
            problem = hostile.judge_frame(data, closed)
            rows.append((frame.kind, _short("closed" if closed else json.dumps(data), 120), problem))
            if problem:
                problems.append(f"{frame.kind}: {problem}")
            if closed:
                return rows, problems
        run = await connection.send_message("still there after the hostile frames?")
        await connection.wait_until(lambda: run.done, seconds)
        if run.status != "completed":
            problems.append("an ordinary message afterwards did not complete on the same socket: "
                            f"got {describe_frames(connection.frames)}")
        return rows, problems
    finally:
        await connection.close()


def _as_object(frame: Frame | None) -> dict[str, Any] | None:
    """The answer as the judge reads it: its JSON object, or a stand-in naming what it was instead."""
    if frame is None:
        return None
    if frame.data is not None:
        return dict(frame.data)
    return {"type": "(not a JSON object)", "raw": _short(frame.raw)}


def _table(headers: list[str], rows: list[tuple], caption: str) -> str:
    return htmllog.table(headers, ([cell or "ok" for cell in row] for row in rows), caption)


def _s(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)

"""What the security suite needs beyond CrosstalkAuth and CrosstalkChat.

A WebSocket handshake with no ``Authorization`` header at all (the chat library
always sends the user's or a given token) and connection entries the backend keeps
after a socket closed (``/metrics``); session records in Redis are counted by
``CrosstalkStores`` (``Get Session Count``).  The handshake uses the synchronous
``websockets`` client: one short-lived socket, no event loop to share.
"""

from __future__ import annotations

import html
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import requests
from assertionengine import AssertionOperator
from crosstalk import assertions, context, hostile, testhooks
from crosstalk import profile as target_profile
from crosstalk.context import Capability
from crosstalk.model import TestUser
from crosstalk.secrets import mask
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library
from robot.libraries.BuiltIn import BuiltIn
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

DEFAULT_TIMEOUT = timedelta(seconds=10)


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def _token_of(who: TestUser | str | None) -> str | None:
    if isinstance(who, TestUser):
        return who.access_token
    return who or None


def _label_of(who: TestUser | str | None) -> str:
    return who.label if isinstance(who, TestUser) else "a raw token"


@dataclass
class Probe:
    label: str
    connection: ClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    consumed: int = 0
    closed_code: int | None = None
    closed_reason: str = ""

    def pull(self, deadline: float) -> dict[str, Any] | None:
        """The next frame that arrives before `deadline` (None on timeout or close)."""
        if self.closed_code is not None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            raw = self.connection.recv(timeout=remaining)
        except TimeoutError:
            return None
        except ConnectionClosed as closed:
            self.closed_code = closed.rcvd.code if closed.rcvd else 1006
            self.closed_reason = closed.rcvd.reason if closed.rcvd else "no close frame"
            return None
        try:
            frame = json.loads(raw)
        except ValueError:
            frame = {"type": "(not JSON)", "raw": _short(str(raw))}
        if not isinstance(frame, dict):
            frame = {"type": "(not an object)", "raw": _short(str(raw))}
        frame = target_profile.current().canonical_event(frame)
        frame["_received_at"] = time.monotonic()
        self.received.append(frame)
        return frame

    def describe(self, frames: list[dict[str, Any]]) -> str:
        if not frames:
            got = "nothing"
        else:
            got = ", ".join(
                f"{f.get('type')}" + (f"({f.get('code')})" if f.get("code") else "")
                + (f"[{f.get('client_message_id')}]" if f.get("client_message_id") else "")
                for f in frames[-8:]
            )
        if self.closed_code is not None:
            got += f"; socket closed by server with code {self.closed_code} {self.closed_reason!r}"
        return got


@library(scope="SUITE", version=VERSION, doc_format="ROBOT", auto_keywords=False)
class CrosstalkSecurity:
    """Security checks the other Crosstalk libraries do not cover: a handshake without any
    credentials, connection entries leaked by the backend (`Get Leaked Connection Count`).

    Tokens are never logged in full; users are `TestUser` objects from `CrosstalkAuth`
    (or raw token strings).
    """

    # ------------------------------------------------------------ handshakes
    @keyword
    def websocket_handshake_should_be_refused(
        self, ws_url: str, token: TestUser | str | None = None, status: int = 401, origin: str | None = None,
        what: str = "", timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        """Fails unless the WebSocket handshake is refused with HTTP ``status`` (for 401 a close
        with code 4401 before any data also counts).

        ``token`` is a user (their current access token) or a raw token string; empty sends no
        ``Authorization`` header. ``origin`` sets the ``Origin`` header (``null`` is sent as is).
        ``what`` names the attempt in the failure message.

        Example:
        | Websocket Handshake Should Be Refused | ${WS_URL} | ${forged} | what=alg none token |
        | Websocket Handshake Should Be Refused | ${WS_URL} | ${token} | status=403 | origin=null |
        """
        what = what or f"token of {_label_of(token)}"
        plain = _token_of(token)
        headers = {"Authorization": f"Bearer {plain}"} if plain else {}
        shown = mask(plain) if plain else "(no Authorization header)"
        logger.info(f"Handshake to {ws_url} with {what}: token {shown}, Origin {origin!r}")
        try:
            connection = connect(ws_url, additional_headers=headers, origin=origin, open_timeout=_s(timeout),
                                 compression=None, max_size=None)
        except InvalidStatus as refused:
            got = refused.response.status_code
            if got != status:
                body = _short(refused.response.body.decode("utf-8", "replace"))
                raise AssertionError(f"WebSocket handshake with {what}: expected HTTP {status}, "
                                     f"got HTTP {got}: {body}") from None
            logger.info(f"Refused with HTTP {got}, as expected.")
            return
        except (InvalidHandshake, OSError, TimeoutError) as error:
            raise AssertionError(f"WebSocket handshake with {what} did not complete "
                                 f"({type(error).__name__}: {error}); expected HTTP {status}") from None
        probe = Probe(what, connection)
        try:
            first = probe.pull(time.monotonic() + 1.0)
            if status == 401 and first is None and probe.closed_code == 4401:
                logger.info("Accepted, then closed with 4401 before any data, as allowed.")
                return
            sent_origin = f"Origin {origin!r}" if origin else "no Origin"
            raise AssertionError(
                f"WebSocket handshake with {what} ({sent_origin}) was accepted (HTTP 101): expected HTTP "
                f"{status}; then received: {probe.describe(probe.received)}")
        finally:
            connection.close()

    # ------------------------------------------------------------ races
    @keyword
    def post_concurrently(
        self, url: str, body: dict[str, Any], count: int = 8, timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> list[int]:
        """Sends ``count`` identical ``POST url`` requests released at the same instant; returns
        their HTTP status codes (in completion order).

        A check-then-act race (e.g. a refresh token checked "unused", then marked used)
        lets several of them through; a correct server lets exactly one.

        Example:
        | ${statuses}= | Post Concurrently | ${AUTH_URL}/auth/refresh | ${body} | count=8 |
        | Should Be Equal As Integers | ${{ $statuses.count(200) }} | 1 |
        """
        barrier = threading.Barrier(count)
        statuses: list[int] = []
        errors: list[str] = []
        lock = threading.Lock()

        def fire() -> None:
            with requests.Session() as session:
                # connect and build the request first, so that the barrier releases bytes on the wire
                session.head(url, timeout=_s(timeout))
                prepared = session.prepare_request(requests.Request("POST", url, json=body))
                barrier.wait(_s(timeout))
                try:
                    status = session.send(prepared, timeout=_s(timeout)).status_code
                except requests.RequestException as error:
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")
                    return
                with lock:
                    statuses.append(status)

        threads = [threading.Thread(target=fire, daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(_s(timeout) * 3)
        if errors or len(statuses) != count:
            raise AssertionError(f"{count} concurrent POST {url}: only {len(statuses)} answered within "
                                 f"{_s(timeout):g} s; errors: {'; '.join(errors[:3]) or 'none'}")
        logger.info(f"{count} concurrent POST {url}: statuses {statuses}")
        return statuses

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
        try:  # the reference platform's JSON counters
            metrics = requests.get(f"{backend_url}/metrics", timeout=10).json()
            return int(metrics["tracked_connections"]) - int(metrics["active_websockets"])
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass
        # the contract's optional Prometheus gauges (METRICS_URL, or the path /health advertises)
        urls = testhooks.metrics_urls(context.current().get("METRICS_URL")) or \
            testhooks.advertised_metrics_urls(backend_url)
        leaked, source = testhooks.leaked_connections(urls)
        if leaked is None:
            context.current().skip(
                Capability.METRICS, f"needs metrics: the server's connection entries cannot be read: "
                f"{source} (contract rule CAP-2: {testhooks.TRACKED} and {testhooks.ACTIVE} gauges)")
        return int(leaked)

    # ------------------------------------------------------------ hostile input
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
        with requests.Session() as session:
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
        logger.info(_table(["input", "status", "body", "verdict"], rows), html=True)
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
        unique = uuid.uuid4().hex[:8]
        try:
            connection = connect(ws_url, additional_headers={"Authorization": f"Bearer {user.access_token}"},
                                 open_timeout=_s(timeout), compression=None, max_size=None)
        except (InvalidHandshake, OSError, TimeoutError) as error:
            raise AssertionError(f"{user.label} could not open a WebSocket to {ws_url} "
                                 f"({type(error).__name__}: {error})") from None
        probe = Probe(user.label, connection)
        rows, problems = [], []
        try:
            for frame_probe in hostile.frame_probes(depth, unique):
                connection.send(frame_probe.payload)
                answer = probe.pull(time.monotonic() + _s(timeout))
                closed = (f"code {probe.closed_code} {probe.closed_reason!r}"
                          if probe.closed_code is not None else None)
                problem = hostile.judge_frame(answer, closed)
                shown = "closed" if closed else json.dumps({k: v for k, v in (answer or {}).items()
                                                            if not k.startswith("_")})
                rows.append((frame_probe.kind, _short(shown, 120), problem))
                if problem:
                    problems.append(f"{frame_probe.kind}: {problem}")
                if closed:
                    break
            if probe.closed_code is None:
                cmid = f"after-hostile-{unique}"
                connection.send(json.dumps({"type": "user_message", "client_message_id": cmid,
                                            "content": "still there after the hostile frames?"}))
                deadline = time.monotonic() + _s(timeout)
                final = None
                while (frame := probe.pull(deadline)) is not None:
                    if frame.get("client_message_id") == cmid and frame.get("type") in (
                            "agent_completed", "agent_error", "error"):
                        final = frame
                        break
                if final is None or final.get("type") != "agent_completed":
                    problems.append("an ordinary message afterwards did not complete on the same socket: "
                                    f"got {probe.describe(probe.received)}")
        finally:
            connection.close()
        logger.info(_table(["frame", "answer", "verdict"], rows), html=True)
        if problems:
            raise AssertionError(f"{user.label}'s hostile frames were not refused cleanly: "
                                 + "; ".join(problems[:6]))
        logger.info(f"{len(rows)} hostile frames each got an error frame; the socket stayed usable.")


def _table(headers: list[str], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c or 'ok'))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table border="1" style="border-collapse: collapse"><tr>{head}</tr>{body}</table>'


def _s(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)

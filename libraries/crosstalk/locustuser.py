"""Crosstalk chat users for Locust: scale out on Locust's distributed runner (master + workers).

Each Locust user is a real platform user (registered and logged in over HTTP
with :func:`crosstalk.load.register_and_login`) holding one WebSocket
(websocket-client, cooperative under Locust's gevent).  Messages, ownership
checks, canaries and the event grammar come from the same
:class:`crosstalk.loadcore.ChatUserCore` the Robot load driver uses, so every
frame is checked as it arrives, on every worker:

* ``WS chat message`` - latency to ``agent_completed``, a failure for any
  wrong answer, contract error (event order, ``seq``), agent error or timeout;
* ``WS first event`` - latency to the run's first event;
* ``ISOLATION <kind>`` - a failure for every misrouted event or foreign canary.

Latency counts from each message's *intended* send time: with
``--crosstalk-pacing S`` a user's messages are due every S seconds and a slow
run makes the next ones late, not unmeasured (no coordinated omission); with
pacing 0 the user is a closed loop and latency counts from the send.

The master (or a local run) sets a non-zero exit code in Locust's
``quitting`` hook on any failure, any isolation violation, nothing measured, or
a p95 over ``--crosstalk-p95-ms``.

Example (one machine, loopback)::

    locust -f bench/locust_crosstalk.py --master --headless --expect-workers 2 -u 100 -r 100 \\
        --run-time 30s --crosstalk-auth-url http://127.0.0.1:8081 --crosstalk-ws-url ws://127.0.0.1:8000/ws
    locust -f bench/locust_crosstalk.py --worker      # twice, on this or other machines
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import websocket
from locust import User, between, constant, events, task
from locust.exception import StopUser
from locust.runners import WorkerRunner

from .load import new_load_users, register_and_login
from .loadcore import ChatUserCore, parse_object
from .metrics import RunIdLedger

log = logging.getLogger("crosstalk.locust")
CHAT = "chat message"
CHAT_FAILED = "chat message failed"
FIRST_EVENT = "first event"
REQUEST_TYPE = "WS"
ISOLATION = "ISOLATION"
_ledger = RunIdLedger()  # run ids seen by this worker: a repeat is a violation


class CrosstalkFailure(Exception):
    """A message that did not complete correctly (its kind and the first line of detail)."""


class LocustSink:
    """Feeds what a ChatUserCore measures into Locust's request events."""

    def __init__(self, environment: Any) -> None:
        self.fire = environment.events.request.fire

    def _report(self, request_type: str, name: str, seconds: float, error: Exception | None) -> None:
        self.fire(request_type=request_type, name=name, response_time=seconds * 1000.0, response_length=0,
                  exception=error, context={})

    def record_sent(self, stats: Any, at_mono: float) -> None:
        pass

    def record_event(self, stats: Any) -> None:
        pass

    def record_gap(self, seconds: float) -> None:
        pass

    def record_finished(self) -> None:
        pass

    def record_first_event(self, stats: Any, seconds: float) -> None:
        self._report(REQUEST_TYPE, FIRST_EVENT, seconds, None)

    def record_run_id(self, run_id: str) -> None:
        if run_id in _ledger:
            self.record_violation("run_id_collision", f"run id {run_id} was handed out twice")
        _ledger.add(run_id)

    def record_completion(self, stats: Any, seconds: float, at_mono: float) -> None:
        self._report(REQUEST_TYPE, CHAT, seconds, None)

    def record_error(self, kind: str, detail: str = "", stats: Any = None) -> None:
        # failures under their own name: their zero times stay out of the chat percentiles
        self._report(REQUEST_TYPE, CHAT_FAILED, 0.0, CrosstalkFailure(f"{kind}: {detail[:200]}"))

    def record_violation(self, kind: str, detail: str, stats: Any = None) -> None:
        self._report(ISOLATION, kind, 0.0, CrosstalkFailure(detail[:200]))


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("Crosstalk")
    group.add_argument("--crosstalk-auth-url", env_var="CROSSTALK_AUTH_URL", default="",
                       help="auth service base URL (users register and log in there)")
    group.add_argument("--crosstalk-ws-url", env_var="CROSSTALK_WS_URL", default="",
                       help="agent WebSocket URL, e.g. ws://127.0.0.1:8000/ws")
    group.add_argument("--crosstalk-messages", type=int, default=0,
                       help="messages per user, then the user stops (0: until --run-time)")
    group.add_argument("--crosstalk-pacing", type=float, default=0.5,
                       help="seconds between a user's messages; latency counts from each one's due time "
                       "(0: closed loop, latency from the send)")
    group.add_argument("--crosstalk-timeout", type=float, default=30.0,
                       help="seconds a run may take from its due time")
    group.add_argument("--crosstalk-p95-ms", type=float, default=0.0,
                       help="SLA: the master exits non-zero when the chat p95 exceeds this (0: no SLA)")


def _option(environment: Any, name: str) -> Any:
    return getattr(environment.parsed_options, name, None) if environment.parsed_options else None


class CrosstalkChatUser(User):
    """One chat user: one WebSocket, one message after another, every frame checked on arrival."""

    wait_time = constant(0)
    abstract = True

    def on_start(self) -> None:
        env = self.environment
        auth_url = _option(env, "crosstalk_auth_url") or os.environ.get("CROSSTALK_AUTH_URL", "")
        self.auth_url = auth_url.rstrip("/")
        self.ws_url = _option(env, "crosstalk_ws_url") or os.environ.get("CROSSTALK_WS_URL", "")
        if not self.auth_url or not self.ws_url:
            log.error("Set --crosstalk-auth-url and --crosstalk-ws-url (or CROSSTALK_AUTH_URL/WS_URL).")
            raise StopUser()
        self.timeout = float(_option(env, "crosstalk_timeout") or 30.0)
        self.pacing = float(_option(env, "crosstalk_pacing") or 0.0)
        self.limit = int(_option(env, "crosstalk_messages") or 0)
        user = getattr(self, "credentials", None)  # a logged-in TestUser handed in (the bench does)
        if user is None:
            user = new_load_users(1, f"lw{os.getpid()}x")[0]
            register_and_login(self.auth_url, user, self.timeout)
        self.core = ChatUserCore(user, LocustSink(env))
        self.ws = websocket.create_connection(
            self.ws_url, header=[f"Authorization: Bearer {user.access_token}"], timeout=self.timeout,
            suppress_origin=True, enable_multithread=False,
        )
        self.next_due = time.monotonic()

    def on_stop(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()

    @task
    def chat(self) -> None:
        if self.limit and self.core.sent_count >= self.limit:
            raise StopUser()
        now = time.monotonic()
        if self.pacing:
            if self.next_due > now:
                time.sleep(self.next_due - now)  # gevent-patched: yields to the other users
            intended, self.next_due = self.next_due, self.next_due + self.pacing
        else:
            intended = now
        pending, text = self.core.next_message(intended)
        try:
            self.ws.send(text)
        except (websocket.WebSocketException, OSError) as exc:
            self.core.fail_all("send_failed", f"could not be sent: {exc}")
            raise StopUser() from None
        while not pending.done:
            remaining = pending.intended + self.timeout - time.monotonic()
            if remaining <= 0:
                self.core.expire(pending, self.timeout)
                break
            self.ws.settimeout(remaining)
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError) as exc:
                self.core.fail_all("connection_dropped", f"lost: the connection dropped ({exc})")
                raise StopUser() from None
            text_frame = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            self.core.on_frame(text_frame, parse_object(text_frame), time.monotonic())


class ChatUser(CrosstalkChatUser):
    """The default user of ``bench/locust_crosstalk.py``."""

    abstract = False
    wait_time = between(0, 0)


_reporting_workers: set[str] = set()


@events.worker_report.add_listener
def _worker_reported(client_id: str, data: Any, **_kwargs: Any) -> None:
    """On the master: which workers sent statistics (their stats are merged into the master's)."""
    _reporting_workers.add(client_id)


@events.quitting.add_listener
def _verdict(environment: Any, **_kwargs: Any) -> None:
    """Fail the job (exit code 1) on any failure or violation, nothing measured, or a missed SLA."""
    if isinstance(environment.runner, WorkerRunner):
        return
    stats = environment.stats
    chat = stats.get(CHAT, REQUEST_TYPE)
    problems = []
    if chat.num_requests == 0:
        problems.append("no chat message completed")
    violations: dict[str, int] = {}
    for error in stats.errors.values():
        if error.method == ISOLATION:
            violations[error.name] = violations.get(error.name, 0) + error.occurrences
    if violations:
        problems.append(f"isolation violations {violations}")
    failed = stats.entries.get((CHAT_FAILED, REQUEST_TYPE))
    failures = failed.num_failures if failed is not None else 0
    if failures:
        problems.append(f"{failures} chat messages failed")
    sla = float(_option(environment, "crosstalk_p95_ms") or 0.0)
    p95 = chat.get_response_time_percentile(0.95) if chat.num_requests else None
    if sla and p95 is not None and p95 > sla:
        problems.append(f"chat p95 {p95:.0f} ms > SLA {sla:g} ms")
    summary = {
        "workers": len(_reporting_workers),
        "chat_ok": chat.num_requests, "chat_failed": failures, "violations": violations,
        "p50_ms": chat.get_response_time_percentile(0.5) if chat.num_requests else None, "p95_ms": p95,
        "p99_ms": chat.get_response_time_percentile(0.99) if chat.num_requests else None,
        "verdict": "failed: " + "; ".join(problems) if problems else "passed",
    }
    print("CROSSTALK " + json.dumps(summary), flush=True)
    if problems:
        environment.process_exit_code = 1

"""Robot Framework library: concurrent chat load, SLA thresholds and stakeholder charts."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from assertionengine import AssertionOperator
from crosstalk import assertions, charts, context, registry, testhooks
from crosstalk.context import Capability
from crosstalk.engine import get_engine
from crosstalk.load import (
    DEFAULT_KEEP_FRAMES,
    LoadConfig,
    LoadModel,
    LoadRun,
    foreign_canaries,
    local_platform_pids,
    run_load,
)
from crosstalk.load import write_summary as _write_summary
from crosstalk.metrics import LoadMetrics
from crosstalk.model import TestUser
from crosstalk.registry import Cleanup
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library
from robot.libraries.BuiltIn import BuiltIn

PROGRESS_EVERY = 5.0


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


@library(scope="GLOBAL", version=VERSION, auto_keywords=False, listener=Cleanup())
class CrosstalkLoad:
    """Drives N concurrent chat users from this process and asserts SLA thresholds.

    Every simulated user is a real platform user with its own WebSocket; the
    frames it receives are recorded on its ``TestUser`` so the isolation oracle
    can check them afterwards (``${run.users}``).  Latencies go into HDR
    histograms; each run logs a metrics table and charts into log.html and
    writes a JSON summary under ``${OUTPUT DIR}/load/``
    (or ``LOAD_RESULTS_DIR``).

    SLA thresholds are assertions on `Get Load Metric`, with the operators of Browser's
    AssertionEngine: ``Get Load Metric  ${run}  p95  <  250ms`` (time to first event, i.e.
    agent startup), ``completion.p99  <  1s``, ``connect.max  <  2s``, ``gap.p99  <  100ms``,
    ``fairness  >  0.7``, ``errors  ==  0``, ``errors.timeout  ==  0``, ``throughput  >  2``,
    ``success_rate  >=  100%``, ``routing_accuracy  ==  100%``, ``platform_memory  <  4GB``,
    ``platform_cpu  <  80%``, ``generator_cpu  <  80%``.  Durations compare as durations,
    memory as sizes, rates as percentages.

    A load test can run alone (``robot -t``): `Get Shared Chat Load` makes a suite's load
    run on first use and hands the same run to every later test of the suite.
    """

    def __init__(self) -> None:
        self.runs: list[LoadRun] = []
        self._summaries: dict[int, Path] = {}
        # (suite id, suite name, run name) -> (config, test that made it, the run or why it failed)
        self._shared: dict[tuple[str, str, str], tuple[LoadConfig, str, LoadRun | str]] = {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _variable(name: str, default: str | None = None) -> str | None:
        if name in context.BY_NAME:
            return context.current().get(name) or default
        value = BuiltIn().get_variable_value("${" + name + "}")
        if value in (None, ""):
            value = os.environ.get(name) or default
        return None if value is None else str(value)

    def _target(self) -> tuple[str, str]:
        auth_url, ws_url = self._variable("AUTH_URL"), self._variable("WS_URL")
        if not auth_url or not ws_url:
            raise AssertionError(
                "AUTH_URL and WS_URL are not set: start the platform first (suites/__init__.robot) "
                "or pass --variable AUTH_URL:... --variable WS_URL:..."
            )
        return auth_url.rstrip("/"), ws_url

    def _platform_pids(self) -> list[int]:
        urls = [self._variable(n) or "" for n in ("AUTH_URL", "BACKEND_URL", "AUTH_DATABASE_URL",
                                                  "BACKEND_DATABASE_URL", "REDIS_URL")]
        return local_platform_pids(urls)

    def _drive(self, config: LoadConfig, timeout: timedelta | None, users: list[TestUser] | None = None,
               previous: LoadRun | None = None) -> LoadRun:
        auth_url, ws_url = self._target()
        run = LoadRun(config, LoadMetrics(config.name))
        # registering users hashes passwords on the server: allow for it beside the runs themselves
        default_limit = 120.0 + 0.5 * config.users + config.message_timeout * config.messages * 2
        limit = _seconds(timeout) if timeout else default_limit
        metrics_urls = testhooks.metrics_urls(context.current().get("METRICS_URL"))
        cores = context.current().int("PLATFORM_CORES", 0) or None
        future = get_engine().submit(
            run_load(config, auth_url, ws_url, users=users,
                     platform_pids=[] if metrics_urls else self._platform_pids(), run=run,
                     previous=previous, metrics_urls=metrics_urls, platform_cores=cores)
        )
        started = last = time.monotonic()
        shown = ""
        # progress from the main thread: robot.api.logger drops messages from the engine thread
        while True:
            try:
                future.result(1.0)
                break
            except concurrent.futures.TimeoutError:
                now = time.monotonic()
                if now - started > limit:
                    future.cancel()
                    raise AssertionError(
                        f"Load run '{config.name}' did not finish within {limit:g} s: {run.progress()}"
                    ) from None
                if now - last >= PROGRESS_EVERY:
                    line = run.progress()
                    if line != shown:  # a stalled phase prints once, not every few seconds
                        logger.console(line)
                        shown = line
                    last = now
        if time.monotonic() - started >= PROGRESS_EVERY:
            logger.console(run.progress())
        self.runs.append(run)
        self._report(run)
        return run

    def _report(self, run: LoadRun) -> None:
        metrics = run.metrics
        logger.info(charts.report(metrics), html=True)
        for warning in metrics.warnings:
            logger.warn(warning)
        for kind, example in metrics.error_examples.items():
            logger.info(f"first {kind} error: {example}")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # every artifact of a run lands under its output directory (pabot: the process's own one)
        directory = Path(self._variable("LOAD_RESULTS_DIR")
                         or Path(BuiltIn().get_variable_value("${OUTPUT DIR}")) / "load")
        slug = re.sub(r"[^A-Za-z0-9]+", "_", metrics.name).strip("_") or "load"
        path = directory / f"{slug}-{stamp}-{os.getpid()}-{len(self.runs)}.json"
        self._summaries[id(run)] = path
        logger.info(f"Latency basis: {metrics.latency_basis}")
        logger.info(f"Load summary written to {_write_summary(metrics, path)}")

    # ------------------------------------------------------------------ keywords
    @keyword("Run Chat Load")
    def run_chat_load(
        self,
        users: int,
        messages: int = 1,
        model: LoadModel = LoadModel.CLOSED,
        rate: float = 0.0,
        think_time: timedelta = timedelta(0),
        ramp_up: timedelta = timedelta(0),
        start_together: bool = True,
        message_timeout: timedelta = timedelta(seconds=30),
        name: str = "load",
        timeout: timedelta | None = None,
        keep_frames: int = DEFAULT_KEEP_FRAMES,
        messages_per_thread: int = 0,
        connect_timeout: timedelta = timedelta(seconds=15),
        once_per_suite: bool = False,
    ) -> LoadRun:
        """Registers ``users`` new users, connects each with its own WebSocket and sends ``messages`` each.

        ``model=closed``: each user sends its next message when the previous run
        ended, after ``think_time``.  ``model=open``: messages leave at ``rate``
        per second in total whatever the server does, and latency counts from
        the intended send time (no coordinated omission).  ``ramp_up`` spreads
        the connects; with ``start_together`` (default) every user is connected
        before the first message leaves, so all agents start at the same moment.

        Every frame is checked as it arrives (ownership, canaries, event order)
        and folded into the run's histograms; only the last ``keep_frames``
        frames of each user are kept (failure messages, transcripts, the
        oracle), so memory grows with users, not messages.  With
        ``messages_per_thread`` a user starts a new thread after that many
        messages (the reference agent quotes a thread's whole history).
        ``connect_timeout`` bounds each WebSocket handshake (thousands of
        simultaneous handshakes queue on the server).
        The closed model with several messages per user is corrected for
        coordinated omission; the log says how latency was measured.

        With ``once_per_suite`` the run is made on the first call in a suite and every
        later call of the suite with the same arguments returns that same run: several
        tests can assert on one burst (the startup burst costs a registration per user
        and its point is that everyone starts at once, so it is not repeated per test),
        and yet each test can run alone (``robot -t``) because whichever test comes first
        makes the run.  A run that could not be made fails the test that asked for it;
        every later test asking for it fails with the same reason and the name of that
        test, without trying again.

        The connections stay open after the run (see `Load Connections Should
        Be Held` and `Close Load Users`).  Logs a metrics table with charts and
        writes a JSON summary under ``${OUTPUT DIR}/load/``; returns the run, whose
        ``users`` attribute lists the ``TestUser`` objects for the isolation oracle.

        Example:
        | ${run} = | Run Chat Load | users=100 | messages=1 | name=agent startup |
        | ${run} = | Run Chat Load | users=50 | messages=10 | model=open | rate=100 |
        | ${run} = | Run Chat Load | users=20 | name=agent startup | once_per_suite=${True} |
        """
        config = LoadConfig(
            users=users, messages=messages, model=model, rate=rate, think_time=_seconds(think_time),
            ramp_up=_seconds(ramp_up), start_together=start_together,
            message_timeout=_seconds(message_timeout), name=name, keep_frames=keep_frames,
            messages_per_thread=messages_per_thread, connect_timeout=_seconds(connect_timeout),
        )
        try:
            config.validate()
        except ValueError as exc:
            raise ValueError(f"Run Chat Load: {exc}") from None
        if not once_per_suite:
            return self._drive(config, timeout)
        return self._once_per_suite(config, timeout)

    def _once_per_suite(self, config: LoadConfig, timeout: timedelta | None) -> LoadRun:
        """The suite's run of ``config.name``: made now on first use, else the one made before."""
        key = (*self._suite_key(), config.name)
        if key in self._shared:
            made, test, run_or_error = self._shared[key]
            if made != config:
                differ = ", ".join(f"{f.name}={getattr(made, f.name)!r} (now {getattr(config, f.name)!r})"
                                   for f in dataclasses.fields(made)
                                   if getattr(made, f.name) != getattr(config, f.name))
                raise ValueError(
                    f"Run Chat Load: the load run '{config.name}' of this suite was already made by test "
                    f"'{test}' with {differ}; give the same arguments or another name.")
            if isinstance(run_or_error, str):
                raise AssertionError(f"The load run '{config.name}' of this suite could not be made "
                                     f"(tried by test '{test}'): {run_or_error}")
            logger.info(f"Reusing the load run '{config.name}' made by test '{test}' "
                        f"({len(run_or_error.load_users)} users, sockets still open).")
            return run_or_error
        test = self._test_name()
        try:
            run = self._drive(config, timeout)
        except Exception as exc:
            self._shared[key] = (config, test, str(exc) or type(exc).__name__)
            raise
        self._shared[key] = (config, test, run)
        for load_user in run.load_users:  # the suite's run: its sockets live until the suite ends
            if load_user.connection is not None:
                registry.keep_for_suite(load_user.connection)
        return run

    @staticmethod
    def _suite_key() -> tuple[str, str]:
        from robot.running.context import EXECUTION_CONTEXTS

        suite = EXECUTION_CONTEXTS.current.suite if EXECUTION_CONTEXTS.current else None
        return str(getattr(suite, "id", "")), str(getattr(suite, "full_name", ""))

    @staticmethod
    def _test_name() -> str:
        return str(BuiltIn().get_variable_value("${TEST NAME}", "suite setup"))

    @keyword("Run Next Load Round")
    def run_next_load_round(
        self,
        previous: LoadRun,
        messages: int = 1,
        think_time: timedelta = timedelta(0),
        message_timeout: timedelta = timedelta(seconds=30),
        name: str | None = None,
    ) -> LoadRun:
        """Sends another round of ``messages`` per user over the same users and open connections.

        The round is measured on its own (fresh histograms), so rounds can be
        compared with `Get Load Metric` and `Get Load Metric Spread`.

        Example:
        | ${round2} = | Run Next Load Round | ${round1} | messages=5 |
        """
        config = LoadConfig(
            users=len(previous.load_users), messages=messages, think_time=_seconds(think_time),
            message_timeout=_seconds(message_timeout),
            name=name or f"{previous.config.name} +1", keep_frames=previous.config.keep_frames,
            messages_per_thread=previous.config.messages_per_thread,
        )
        return self._drive(config, None, previous=previous)

    @keyword("Run Load Rounds")
    def run_load_rounds(
        self,
        users: int,
        rounds: int,
        messages: int = 1,
        think_time: timedelta = timedelta(0),
        message_timeout: timedelta = timedelta(seconds=30),
        name: str = "round",
    ) -> list[LoadRun]:
        """Runs ``rounds`` rounds of ``messages`` per user over the same users and sockets; returns them.

        The first round registers and connects the users; the next ones reuse
        them (`Run Next Load Round`).  Each round gets its own charts and summary.

        Example:
        | ${rounds} = | Run Load Rounds | users=12 | rounds=3 | messages=3 | think_time=20ms |
        """
        if rounds < 1:
            raise ValueError(f"Run Load Rounds needs at least 1 round (got {rounds}).")
        done = [self.run_chat_load(users, messages, think_time=think_time, message_timeout=message_timeout,
                                   name=f"{name} round 1")]
        for number in range(2, rounds + 1):
            done.append(self.run_next_load_round(done[-1], messages, think_time, message_timeout,
                                                 name=f"{name} round {number}"))
        return done

    @keyword("Get Load Metric")
    def get_load_metric(
        self,
        run: LoadRun | list[LoadRun],
        metric: str,
        assertion_operator: AssertionOperator | None = None,
        assertion_expected: Any = None,
        message: str | None = None,
    ) -> Any:
        """Returns one measured value of a load run; with an operator, asserts it (an SLA threshold).

        ``metric`` names what was measured: ``p95`` (time to first event, i.e. agent
        startup), ``completion.p99``, ``connect.max``, ``gap.p99``, ``fairness``, ``errors``,
        ``errors.timeout``, ``throughput``, ``success_rate``, ``routing_accuracy``,
        ``in_flight_peak``, ``dropped``, ``misrouted``, ``platform_memory``, ``platform_cpu``,
        ``generator_cpu`` … (see the library introduction).  Latencies are returned in
        seconds, memory in bytes, rates in percent.

        The operators are those of Browser's AssertionEngine (``==  !=  <  >  <=  >=
        validate  then``).  The expected value is read in the metric's kind: durations as
        ``250ms``/``2s``, memory as ``4GB``, percentages as ``80%``.  A failure names the run,
        its users, what was measured, the measured value and the threshold; a pass adds
        ``p95 212.0 ms (threshold: p95 < 250ms)`` to the test message in report.html, and
        every verdict lands in the run's JSON summary.

        Given a list of runs (the rounds of `Run Load Rounds`) the assertion holds for every
        run and a list of values is returned; a failure names each run that broke it.

        A ``platform_*`` metric the target cannot measure (no ``needs:metrics`` capability)
        gives no verdict: the test ends SKIP if nothing else failed.

        Example:
        | Get Load Metric | ${run} | p95 | < | 250ms |
        | Get Load Metric | ${run} | platform_memory | < | 4GB |
        | Get Load Metric | ${run} | success_rate | >= | 100% |
        | Get Load Metric | ${rounds} | completion.p95 | < | 2s |
        | ${p95} = | Get Load Metric | ${run} | completion.p95 |
        """
        runs = run if isinstance(run, (list, tuple)) else [run]
        if not runs:
            raise ValueError("Get Load Metric got an empty list of runs: run the load first.")
        several = isinstance(run, (list, tuple))
        outcomes = [self._judge(each, metric, assertion_operator, assertion_expected, message, several)
                    for each in runs]
        failed = [o for o in outcomes if o is not None and not o.passed]
        if failed:
            raise AssertionError("; ".join(o.failure for o in failed))
        values = [None if o is None else o.result for o in outcomes]
        return values if isinstance(run, (list, tuple)) else values[0]

    @keyword("Get Load Metric Spread")
    def get_load_metric_spread(
        self,
        rounds: list[LoadRun],
        metric: str,
        assertion_operator: AssertionOperator | None = None,
        assertion_expected: Any = None,
        message: str | None = None,
    ) -> float:
        """Returns how far ``metric`` differs between the slowest and the fastest of ``rounds``; asserts it.

        The rounds of one `Run Load Rounds` should be alike: a spread that grows says the
        platform slows down as it keeps serving the same users.

        Example:
        | Get Load Metric Spread | ${rounds} | completion.p95 | < | 1s |
        """
        if not rounds:
            raise ValueError("Get Load Metric Spread got no rounds: run the load rounds first.")
        measured = [(r, *r.metrics.value_of(metric)) for r in rounds]
        values = [value for _, value, _, _ in measured if value is not None]
        kind, description = measured[0][2], measured[0][3]
        spread = max(values) - min(values) if values else None
        per_round = ", ".join(f"{r.metrics.name} {assertions.show(v, kind)}" for r, v, _, _ in measured)
        logger.info(f"{description}: {per_round}; spread {assertions.show(spread, kind)}")
        outcome = assertions.check(
            lambda: spread, assertion_operator, assertion_expected, kind=kind, message=message,
            subject=f"{metric} spread", note=description,
            what=f"the spread of {metric} between {len(rounds)} rounds ({per_round})")
        if not outcome.passed:
            raise AssertionError(outcome.failure)
        if assertion_operator is not None:
            assertions.report_met(f"{metric} spread {outcome.shown} (threshold: {outcome.expression})")
        return outcome.result

    def _judge(self, run: LoadRun, metric: str, operator: AssertionOperator | None, expected: Any,
               message: str | None, named: bool = False) -> assertions.Outcome | None:
        """One run's verdict on one metric; ``None`` when the target cannot measure it (no verdict)."""
        metrics = run.metrics
        if operator is None:
            return metrics.judge(metric)
        value, _, _ = metrics.value_of(metric)
        ctx = context.current()
        expression = f"{metric} {operator.value} {expected}"
        if metric.startswith("platform_") and value is None:
            if not ctx.has(Capability.METRICS):
                # no resource metrics from this target: no verdict (the test ends SKIP if the rest holds)
                ctx.incomplete(Capability.METRICS, expression)
                return None
            remote = metrics.resources.platform_source.startswith("Prometheus")
            if metric.startswith("platform_cpu") and remote:
                # CPU seconds from a remote platform's Prometheus endpoint, but no core count for a percentage
                reason = (f"{expression} not checked: a CPU percentage of a remote platform needs its core "
                          f"count: set PLATFORM_CORES ({context.ENV_PREFIX}PLATFORM_CORES)")
                if reason not in ctx.pending:
                    ctx.pending.append(reason)
                return None
        outcome = metrics.judge(metric, operator, expected, message)
        logger.info(f"{'ok' if outcome.passed else 'FAILED'}: {outcome.expression}: measured {outcome.shown} "
                    f"({metrics.latency_basis})")
        path = self._summaries.get(id(run))
        if path is not None:  # the summary carries this run's own verdicts
            _write_summary(metrics, path)
        if outcome.passed:
            whose = f"{metrics.name}: " if named else ""
            assertions.report_met(f"{whose}{metric} {outcome.shown} (threshold: {outcome.expression})")
        return outcome

    @keyword("Every User Should Have Own Unique Runs")
    def every_user_should_have_own_unique_runs(self, run: LoadRun) -> None:
        """Every message started exactly one run; no run id was handed out twice, within or across users.

        Example:
        | Every User Should Have Own Unique Runs | ${run} |
        """
        m = run.metrics
        expected = m.sent
        problems = []
        # every run id of every user went through one ledger: a collision within or across users counts
        if m.run_id_collisions:
            problems.append(f"{m.run_id_collisions} run id collisions")
        if len(m.run_ids) != expected:
            problems.append(f"{len(m.run_ids)} unique run ids for {expected} messages sent")
        if problems:
            raise AssertionError(f"Load run '{m.name}': " + "; ".join(problems[:10]))
        logger.info(f"{len(m.run_ids)} unique run ids for {expected} messages of {len(run.load_users)} users")

    @keyword("No Load User Should See Another User's Canary")
    def no_load_user_should_see_another_users_canary(self, run: LoadRun) -> None:
        """Scans every frame every load user received for the other users' canaries and for misrouted events.

        A fast load-time check; the isolation oracle (CrosstalkIsolation) adds
        the stores and REST views.

        Example:
        | No Load User Should See Another User's Canary | ${run} |
        """
        m = run.metrics
        leaks = foreign_canaries(run)
        canaries, misrouted = m.violations.get("foreign_canary", 0), m.misrouted
        if canaries or misrouted:
            examples = [e for e in m.violation_examples if "canary" in e or "another user" in e]
            raise AssertionError(
                f"Load run '{m.name}': {canaries} foreign canaries and {misrouted} misrouted "
                "events: " + "; ".join((examples or leaks)[:10])
            )
        kept = run.config.keep_frames
        logger.info(f"{m.events + m.misrouted} frames of {len(run.load_users)} users checked on arrival: "
                    f"no foreign canary, no misrouting (the last {kept} frames per user are kept)")

    @keyword("Load Connections Should Be Held")
    def load_connections_should_be_held(self, run: LoadRun) -> None:
        """Every user's WebSocket is still open and none dropped; the backend counts at least as many.

        The backend's own count comes from its ``/metrics`` endpoint when it
        has one (``active_websockets``); other processes' sockets may add to it.

        Example:
        | Load Connections Should Be Held | ${run} |
        """
        closed = [lu for lu in run.load_users if lu.connection is None or lu.connection.closed]
        if closed:
            details = "; ".join(
                f"{lu.user.label}: "
                + ("never connected" if lu.connection is None else
                   f"closed with code {lu.connection.close_code} {lu.connection.close_reason}".strip())
                for lu in closed[:10]
            )
            raise AssertionError(
                f"Load run '{run.metrics.name}': {len(closed)} of {len(run.load_users)} WebSockets are not "
                f"open: {details}"
            )
        count = self._backend_websockets()
        if count is not None and count < len(run.load_users):
            raise AssertionError(
                f"Load run '{run.metrics.name}': the backend reports {count} active WebSockets but "
                f"{len(run.load_users)} load users hold one open."
            )
        logger.info(f"{len(run.load_users)} WebSockets open, none dropped; backend reports "
                    f"{'n/a' if count is None else count} active")

    def _backend_websockets(self) -> int | None:
        backend = self._variable("BACKEND_URL")
        if not backend:
            return None
        try:
            with urllib.request.urlopen(f"{backend.rstrip('/')}/metrics", timeout=5) as response:
                return int(json.load(response).get("active_websockets"))
        except (OSError, ValueError, TypeError):
            return None

    @keyword("Close Load Users")
    def close_load_users(self, *runs: LoadRun) -> None:
        """Closes the WebSockets of the given load runs (all runs of this library when none is given).

        Example:
        | [Teardown] | Close Load Users | ${run} |
        """
        targets = list(runs) or self.runs
        for run in targets:
            get_engine().run(run.close(), 60)
        if not runs:  # the suite's shared runs are closed now: the next suite makes its own
            self._shared.clear()

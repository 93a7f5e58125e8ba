"""Robot Framework library: the platform under test (start/attach, target context, capabilities, health)."""

from __future__ import annotations

import html
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from crosstalk import (
    context,
    registry,
    testhooks,  # noqa: F401 - registers the contract-hook probes in context.PROBES
)
from crosstalk import profile as target_profile  # registers the PROFILE loader of the context
from crosstalk.context import Capability, ConfigurationError, SkipRecord, TargetContext
from crosstalk.measurelock import MeasurementLock, MeasurementLockTimeout
from crosstalk.secrets import mask_url
from crosstalk.sharedplatform import (
    PlatformError,
    SharedPlatform,
    check_health,
    variant_requested,
    wait_healthy,
)
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library
from robot.libraries.BuiltIn import BuiltIn
from robot.utils import escape

# every variable the context publishes as a global ${NAME} for resources and suites
PUBLISHED = (
    "AUTH_URL", "BACKEND_URL", "WS_URL", "AUTH_DATABASE_URL", "BACKEND_DATABASE_URL",
    "ANALYTICS_DATABASE_URL", "REDIS_URL", "JWT_ISSUER", "JWT_AUDIENCE", "JWT_PRIVATE_KEY",
    "OVERSIZED_FRAME_BYTES", "FLOOD_SIZE", "METRICS_URL", "RUN_PREFIX", "PROFILE",
)
REPO_ROOT = Path(__file__).resolve().parents[1]


def crosstalk_version() -> str:
    """``git describe`` of this checkout, or ``unknown``."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


@library(scope="GLOBAL", version=VERSION, auto_keywords=False, listener="SELF")
class CrosstalkPlatform:
    """Attaches the suites to the platform under test, or starts the reference platform.

    The target is resolved once per process by `crosstalk.context` with one
    precedence rule for every variable: ``--variable`` > variable file >
    ``CROSSTALK_<NAME>`` environment variable > plain ``<NAME>`` (back-compat for
    the URL variables) > the reference platform.  When ``AUTH_URL`` or
    ``BACKEND_URL`` is set, that target is used and nothing starts or touches the
    reference platform; otherwise the reference platform is started (with the
    fault switches from ``REFPLAT_FAULTS``) and shared by every robot/pabot process.

    The resolved values are published as global variables (``${AUTH_URL}``,
    ``${BACKEND_URL}``, ``${WS_URL}``, the store URLs, ``${JWT_*}``, limits).

    As a listener it skips a test tagged ``needs:<capability>`` whose capability
    the target lacks (one line naming the variable that would enable it) and
    prints a summary of what was skipped and why at the end of the run.
    """

    ROBOT_LISTENER_API_VERSION = 3

    def __init__(self) -> None:
        self._shared: SharedPlatform | None = None
        self._acquired = 0
        self.target: dict[str, str] = {}
        # what the published names held before: a later top-level suite of the same robot run
        # must resolve its own target, not mistake our published reference URLs for a configured one
        self._unpublished: dict[str, object] = {}
        self._summary_printed = False
        self._depth = 0  # nested Start Or Attach Platform calls of this process
        self._cleanup_line = ""
        self._users_created = 0
        self._measurement: MeasurementLock | None = None
        self._suite_exclusive: str | None = None  # id of the suite whose setup measures
        self._suite_wants_exclusive: str | None = None

    # ------------------------------------------------------------------ keywords
    @keyword("Start Or Attach Platform")
    def start_or_attach_platform(self, timeout: timedelta = timedelta(seconds=120)) -> dict:
        """Use the configured target, or start (or join) the shared reference platform; wait until healthy.

        Resolves the target context once, probes it (a configuration error fails
        here with one line naming the variable and its ``CROSSTALK_*`` form),
        publishes the variables globally, names the target in the suite
        metadata and returns the URLs as a dictionary.  Pair it with
        `Release Platform` in the suite teardown.

        Example:
        | Suite Setup    | Start Or Attach Platform |
        | Suite Teardown | Release Platform         |
        """
        ctx = context.peek()
        if ctx is not None and self.target:
            # already attached by a parent suite: a child suite's own setup just joins
            self._depth += 1
            if self._acquired:
                self._acquired += 1
            self._metadata(ctx, top=False)
            logger.info(f"Attached to the {ctx.describe()}; capabilities: {ctx.capability_summary()}")
            self._claim_suite_turn(ctx)
            return dict(self.target)
        self._check_variable_files()
        robot, environ = context.robot_globals(), os.environ
        state_file = context.resolve("REFERENCE_STATE", robot, environ).value
        required = context.resolve("REQUIRE_TARGET", robot, environ).value
        if required and not state_file and not context.is_configured(robot, environ):
            if len(required) <= 3:  # REQUIRE_TARGET=1 / on / yes
                required = (f"REQUIRE_TARGET is set but no target is configured: set "
                            f"{context.how_to_set('AUTH_URL')} and {context.how_to_set('BACKEND_URL')}")
            raise ConfigurationError(f"{required} (a required target never falls back to the reference "
                                     "platform).")
        try:
            if state_file:
                ctx = self._attach_reference(robot, state_file)
            elif context.is_configured(robot, environ):
                ctx = self._attach_configured(robot, timeout.total_seconds())
            else:
                ctx = self._start_reference(robot, timeout.total_seconds())
        except (ConfigurationError, PlatformError) as exc:
            raise ConfigurationError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        previous = context.peek()
        if previous is not None:
            ctx.skipped = previous.skipped
        context.install(ctx)
        self._depth = 1
        self._publish(ctx)
        self.target = {name: ctx.get(name) for name in
                       ("AUTH_URL", "BACKEND_URL", "WS_URL", "AUTH_DATABASE_URL", "BACKEND_DATABASE_URL",
                        "REDIS_URL")}
        self._metadata(ctx, top=True)
        self._log_context(ctx)
        self._claim_suite_turn(ctx)
        return dict(self.target)

    @staticmethod
    def _check_variable_files() -> None:
        # Robot only logs a variable file it could not load and runs on - against the reference
        # platform instead of the intended target.  That is a configuration error: stop here.
        from robot.output import LOGGER

        for message in getattr(LOGGER, "_message_cache", None) or []:
            text = str(getattr(message, "message", ""))
            if getattr(message, "level", "") != "ERROR" or not text.startswith(
                    ("Processing variable file", "Variable file")):
                continue
            first = text.splitlines()[0].rstrip(".")
            if " failed: " in first:  # the file raised: its own message says what to do
                name = first.split("'")[1] if "'" in first else "variable file"
                raise ConfigurationError(f"{name}: {first.split(' failed: ', 1)[1].split(': ', 1)[-1]}.")
            raise ConfigurationError(f"{first}: fix the --variablefile path (nothing was run against a "
                                     "target).")

    def _attach_configured(self, robot: dict, seconds: float) -> TargetContext:
        from crosstalk import probes

        ctx = context.build(robot, os.environ)
        for name in ("AUTH_URL", "BACKEND_URL"):
            value = ctx.get(name)
            if not value:
                other = "BACKEND_URL" if name == "AUTH_URL" else "AUTH_URL"
                raise ConfigurationError(
                    f"{other} is set but {name} is not: set {context.how_to_set(name)} (both are required), "
                    f"or unset {other} to use the reference platform.")
            if not value.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"{name} '{mask_url(value)}' is not an http(s) URL: fix {context.how_to_set(name)}.")
        health = probes.probe_backend(ctx.get("BACKEND_URL"))
        probes.probe(ctx)
        for capability, probe in context.PROBES.items():
            ctx.capabilities[capability] = probe(ctx)
        ctx.versions["platform"] = str(health.get("version") or "not reported by /health")
        faults = health.get("faults")
        ctx.faults = [str(f) for f in faults] if isinstance(faults, list) else []
        return ctx

    def _attach_reference(self, robot: dict, state_file: str) -> TargetContext:
        import json

        from crosstalk import probes

        for name in ("AUTH_URL", "BACKEND_URL"):
            if context.resolve(name, robot, os.environ).value:
                raise ConfigurationError(
                    f"Both REFERENCE_STATE and {name} are set: give one target, either the reference "
                    "platform's state file or the URLs of your own platform.")
        try:
            state = json.loads(Path(state_file).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"REFERENCE_STATE {state_file} is not a readable reference platform state file "
                f"({type(exc).__name__}): fix {context.how_to_set('REFERENCE_STATE')}.") from None
        ctx = context.build(robot, os.environ, reference=context.reference_values(state, None))
        ctx.reference_state = dict(state)
        ctx.reference_log = self._log_beside(Path(state_file))
        ctx.faults = list(state.get("faults") or [])
        try:
            wait_healthy(ctx.get("BACKEND_URL"), 10)
        except PlatformError as exc:
            raise PlatformError(ctx.explain(str(exc))) from None
        probes.probe(ctx)
        ctx.versions["platform"] = f"reference platform (state file {state_file})"
        return ctx

    @staticmethod
    def _log_beside(state_file: Path) -> str:
        """The launcher's log next to its state file (``platform.log``, or ``*<suffix>.log``)."""
        suffix = state_file.stem.split("-", 1)[-1]
        beside = sorted(state_file.parent.glob(f"*{suffix}*.log"))
        candidates = [state_file.with_name("platform.log"), *beside]
        found = next((c for c in candidates if c.is_file()), None)
        return str(found) if found else "not found beside the state file"

    def _start_reference(self, robot: dict, seconds: float) -> TargetContext:
        from crosstalk import probes

        if self._shared is None:
            self._shared = SharedPlatform(os.environ.get("REFPLAT_FAULTS", ""), variant=variant_requested())
        state = self._shared.acquire(seconds)
        self._acquired += 1
        reference = context.reference_values(state, self._shared.key_file)
        ctx = context.build(robot, os.environ, reference=reference)
        ctx.reference_state = dict(state)
        ctx.reference_log = str(self._shared.log_file)
        ctx.faults = list(state.get("faults") or [])
        probes.probe(ctx)
        for capability, probe in context.PROBES.items():
            ctx.capabilities[capability] = probe(ctx)
        launcher = state.get("pids", {}).get("launcher")
        ctx.versions["platform"] = f"reference platform (launcher pid {launcher})"
        return ctx

    def _publish(self, ctx: TargetContext) -> None:
        builtin = BuiltIn()
        self._unpublished = {name: builtin.get_variable_value("${%s}" % name) for name in PUBLISHED}  # noqa: UP031
        for name in PUBLISHED:
            builtin.set_global_variable("${%s}" % name, ctx.get(name))  # noqa: UP031

    def _unpublish(self) -> None:
        builtin = BuiltIn()
        for name, value in self._unpublished.items():
            builtin.set_global_variable("${%s}" % name, "" if value is None else value)  # noqa: UP031
        self._unpublished = {}

    @staticmethod
    def _metadata(ctx: TargetContext, top: bool) -> None:
        import robot

        ctx.versions.setdefault("crosstalk", crosstalk_version())
        ctx.versions.setdefault("robot", robot.__version__)
        rows = {
            "Target": ctx.describe(),
            "Profile": ctx.profile.describe() if isinstance(ctx.profile, target_profile.Profile) else "none",
            "Faults planted": ", ".join(ctx.faults) or "none" if not ctx.configured
            else ", ".join(ctx.faults) or "none reported",
            "Capabilities": ctx.capability_summary(),
            "Versions": f"Crosstalk {ctx.versions['crosstalk']}, Robot Framework {ctx.versions['robot']}, "
                        f"Python {sys.version.split()[0]}, "
                        f"platform: {ctx.versions.get('platform', 'unknown')}",
        }
        builtin = BuiltIn()
        for name, value in rows.items():
            builtin.set_suite_metadata(name, value, top=top)
            if top:
                builtin.set_suite_metadata(name, value)

    @staticmethod
    def _log_context(ctx: TargetContext) -> None:
        shown = ctx.masked()
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(value))}</td>"
            f"<td>{html.escape(ctx.sources.get(name, ''))}</td></tr>"
            for name, value in shown.items())
        caps = "".join(
            f"<tr><td>{html.escape(c.value)}</td><td>{'yes' if s.available else 'no'}</td>"
            f"<td>{html.escape(s.detail or s.reason or '')}</td></tr>" for c, s in ctx.capabilities.items())
        logger.info(f"Using the {html.escape(ctx.describe())}:"
                    "<table><tr><th>variable</th><th>value</th><th>from</th></tr>"
                    f"{rows}</table><table><tr><th>capability</th><th>available</th><th>why</th></tr>{caps}"
                    "</table>", html=True)
        for capability, state in ctx.capabilities.items():
            given = [n for n in context.CAPABILITY_VARIABLES[capability] if ctx.values.get(n)]
            if not state.available and given and not any(context.is_off(ctx.values.get(n)) for n in given):
                # a variable was given but does not work: say so once, at setup
                logger.warn(f"{capability.tag} tests will skip: {state.reason}")

    @keyword("Release Platform")
    def release_platform(self) -> None:
        """Give back this process's claim on the shared reference platform (the last holder stops it).

        Does nothing for a configured target.  Safe to call more than once.

        Example:
        | Suite Teardown | Release Platform |
        """
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self._clean_up()
            self._unpublish()
        if self._shared is None or self._acquired == 0:
            return
        self._acquired -= 1
        if self._acquired == 0:
            outcome = self._shared.release()
            self.target = {}
            if outcome == "stopped":
                logger.info("The reference platform was stopped (last holder).")
            elif outcome == "lingering":
                logger.info(
                    f"Last holder: the reference platform stops in {self._shared.linger:g} s unless "
                    "another process joins it (CROSSTALK_PLATFORM_LINGER=0 stops it at once)."
                )

    def _clean_up(self) -> None:
        ctx = context.peek()
        if ctx is None or not ctx.created_users:
            return
        if context.is_off(ctx.values.get("CLEANUP")):
            self._cleanup_line = f"off (CLEANUP): run {ctx.run_prefix} left {len(ctx.created_users)} users"
            logger.info(self._cleanup_line)
            return
        from crosstalk import cleanup

        report = cleanup.clean(ctx)
        self._cleanup_line = report.line()
        (logger.warn if report.problems else logger.info)(self._cleanup_line)
        self._users_created += len(ctx.created_users)
        ctx.created_users.clear()

    @keyword("Clean Up Run")
    def clean_up_run(self, prefix: str = "") -> str:
        """Remove what runs with ``prefix`` (default: this run's) left on the target; returns the report line.

        Threads go through the API (``DELETE /threads/{id}``) for the users in the run's
        ledger, rows and Redis keys through the stores the target gives.  The end of every
        run does this by itself (unless ``CLEANUP`` is ``off``); use this keyword, or
        ``python -m crosstalk.cleanup --prefix ...``, for the leftovers of a crashed run.

        Example:
        | Clean Up Run | ct2611301648 |
        """
        from crosstalk import cleanup

        ctx = context.current()
        if not prefix or prefix == ctx.run_prefix:
            report = cleanup.clean(ctx)
            ctx.created_users.clear()
        else:
            users, files = cleanup.read_ledgers(prefix)
            report = cleanup.Report(prefix, users=len(users))
            cleanup.delete_threads(ctx.get("AUTH_URL"), ctx.get("BACKEND_URL"), users, report)
            stores = {name: ctx.get(name) for name in (*cleanup.STORE_CLEANUP_SQL, "REDIS_URL")}
            cleanup.clean_stores(stores, prefix, (u.user_id for u in users), report)
            if not report.problems:
                for path in files:
                    path.unlink(missing_ok=True)
        logger.info(report.line())
        return report.line()

    @keyword("Platform Should Be Healthy")
    def platform_should_be_healthy(self, timeout: timedelta = timedelta(seconds=10)) -> None:
        """Fail unless ``GET ${BACKEND_URL}/health`` answers 200 within ``timeout``.

        Example:
        | Platform Should Be Healthy | timeout=5s |
        """
        backend = context.current().get("BACKEND_URL")
        if not backend:
            raise PlatformError(
                "BACKEND_URL is not set: run Start Or Attach Platform in the suite setup first."
            )
        try:
            wait_healthy(backend, timeout.total_seconds())
            check_health(backend)
        except PlatformError as exc:
            raise PlatformError(context.current().explain(str(exc))) from None

    @keyword("Require Capability")
    def require_capability(self, capability: Capability) -> None:
        """Skip the current test, with one line naming the variable that would enable it, unless the
        target has ``capability`` (db, analytics-db, redis, signing-key, fault-injection, metrics, limits).

        Prefer the ``needs:<capability>`` tag; this keyword is for a check inside a test.

        Example:
        | Require Capability | redis |
        """
        context.current().require(capability)

    @keyword("Target Has Capability")
    def target_has_capability(self, capability: Capability) -> bool:
        """True when the target has ``capability``.

        Example:
        | ${db} = | Target Has Capability | db |
        """
        return context.current().has(capability)

    # ------------------------------------------------------------------ listener (API v3)
    def start_test(self, data: Any, result: Any) -> None:
        ctx = context.peek()
        if ctx is None:
            return
        ctx.pending.clear()
        missing = ctx.missing_for(list(data.tags))
        if missing is None:
            if self._suite_exclusive is None:
                try:
                    self._take_turn(ctx, "performance" in data.tags, data.longname)
                except MeasurementLockTimeout as exc:
                    self._replace_body(data, "BuiltIn.Fail", str(exc))
            return
        capability, reason = missing
        ctx.skipped.append(SkipRecord(data.longname if hasattr(data, "longname") else data.name,
                                      capability.value if capability else "unknown", reason))
        self._replace_body(data, "BuiltIn.Skip", reason)

    @staticmethod
    def _replace_body(data: Any, name: str, message: str) -> None:
        # Robot runs whatever body the test has when start_test returns: make it one Skip or Fail
        data.body.clear()
        data.setup.config(name=None, args=())
        data.teardown.config(name=None, args=())
        data.body.create_keyword(name, args=[escape(message)])

    def _claim_suite_turn(self, ctx: TargetContext) -> None:
        # a suite whose every test is a performance test may measure in its setup already
        if self._suite_wants_exclusive is None or self._suite_exclusive is not None:
            return
        suite = BuiltIn().get_variable_value("${SUITE NAME}", "")
        self._take_turn(ctx, True, f"{suite} (suite)")
        self._suite_exclusive, self._suite_wants_exclusive = self._suite_wants_exclusive, None

    def _take_turn(self, ctx: TargetContext, exclusive: bool, holder: str) -> None:
        """Performance tests measure alone on the target; the others share it (see crosstalk.measurelock)."""
        self._end_turn()
        self._measurement = MeasurementLock.for_target(ctx.get("BACKEND_URL"))
        waited = self._measurement.acquire(exclusive=exclusive, holder=holder)
        if waited >= 1.0:
            whom = "the tests already running on the platform" if exclusive else "a performance test"
            logger.info(f"Waited {waited:.1f} s for {whom} to finish.", also_console=False)

    def _end_turn(self) -> None:
        if self._measurement is not None:
            self._measurement.release()

    def end_test(self, data: Any, result: Any) -> None:
        ctx = context.peek()
        if self._suite_exclusive is None:
            self._end_turn()
        if ctx is None:
            return
        if result.status == "FAIL":
            # "Connection refused" alone hides the cause: say which service died, how, and where its log is
            note = ctx.death_note()
            if note and note not in result.message:
                result.message = f"{result.message} [{note}]"
        if not ctx.pending:
            return
        pending, ctx.pending = list(ctx.pending), []
        note = "; ".join(pending)
        if result.status == "PASS":
            # it passed on the evidence it had: without the rest, that is no verdict
            for reason in pending:
                ctx.skipped.append(SkipRecord(data.name, "incomplete", reason))
            result.status = "SKIP"
            result.message = f"Passed on the evidence available, but {note}"
        elif result.status == "FAIL":
            result.message = f"{result.message} (also: {note})"

    def start_suite(self, data: Any, result: Any) -> None:
        registry.REGISTRY.start_suite(data.id)  # what opens from here on is this suite's to close
        if data.tests and data.setup and all("performance" in test.tags for test in data.tests):
            self._suite_wants_exclusive = data.id  # claimed by its Start Or Attach Platform

    def end_suite(self, data: Any, result: Any) -> None:
        if self._suite_exclusive == data.id:
            self._suite_exclusive = None
            self._end_turn()
        if self._suite_wants_exclusive == data.id:
            self._suite_wants_exclusive = None
        leaked = registry.REGISTRY.end_suite(data.id, data.name)
        if leaked:
            logger.warn(leaked)
        own = skip_lines(result.tests)
        if own:
            result.metadata["Skipped, and why"] = "; ".join(own)
        if result.parent is not None:
            return
        # what this process did.  Under pabot every process runs one suite below a shared top suite
        # whose metadata pabot merges key by key, so the facts go under a key naming that suite.
        pabot = BuiltIn().get_variable_value("${PABOTQUEUEINDEX}") is not None
        ctx = context.peek()
        lines = skip_lines(result.all_tests)
        facts = {}
        if ctx is not None:
            facts = {"Run prefix": ctx.run_prefix,
                     "Users created": str(self._users_created + len(ctx.created_users))}
            if self._cleanup_line:
                facts["Cleanup"] = self._cleanup_line
        if pabot:
            names = ", ".join(child.name for child in result.suites) or result.name
            if facts:
                result.metadata[f"Run of {names}"] = "; ".join(f"{k.lower()}: {v}" for k, v in facts.items())
        else:
            for key, value in facts.items():
                result.metadata[key] = value
            if lines:
                result.metadata["Skipped, and why"] = "; ".join(lines)
        self._print_summary(skip_lines(result.all_tests))

    def _print_summary(self, lines: list[str]) -> None:
        if self._summary_printed or not lines:
            return
        self._summary_printed = True
        text = "Crosstalk skipped, and why:\n" + "\n".join(f"  {line}" for line in lines)
        sys.__stdout__.write(text + "\n")
        sys.__stdout__.flush()


def skip_lines(tests: Any) -> list[str]:
    """'N tests skipped: reason' per distinct reason, most frequent first."""
    from crosstalk.summary import group_skips

    return group_skips(tests)

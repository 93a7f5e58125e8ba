"""One target context: every target variable resolved once, with one precedence rule.

Every Crosstalk library reads the platform under test from here instead of
reading Robot variables or the environment itself.  A value comes from, in
order of precedence:

1. ``--variable NAME:value`` or a variable file (``--variablefile``) - Robot's own
   rule already puts ``--variable`` above a variable file;
2. the environment variable ``CROSSTALK_<NAME>``;
3. the plain environment variable ``<NAME>`` (back-compat, only for the names in
   `LEGACY_ENVIRONMENT`);
4. the reference platform's value when no target is configured, else the default.

A target is *configured* when ``AUTH_URL`` or ``BACKEND_URL`` resolves to a value;
then nothing starts or touches the reference platform.  ``off`` (or ``none``,
``skip``) as the value of an optional variable switches its capability off.

Capabilities: REST and WebSocket are required; the optional ones are listed in
`Capability`.  A test tagged ``needs:<capability>`` is skipped, with one line
naming the variable that would enable it, when the capability is absent.

Example (inside a library):
    ctx = context.current()
    backend = ctx.get("BACKEND_URL")
    ctx.require(Capability.DB)      # raises SkipExecution with the reason when absent
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "CROSSTALK_"
DOWN_CACHE_S = 10.0
OFF = frozenset({"off", "none", "skip"})


class Capability(str, Enum):
    """Optional abilities of a target.  Tests declare them with ``needs:<value>`` tags."""

    DB = "db"
    AUTH_DB = "auth-db"
    ANALYTICS_DB = "analytics-db"
    REDIS = "redis"
    SIGNING_KEY = "signing-key"
    FAULT_INJECTION = "fault-injection"
    METRICS = "metrics"
    LIMITS = "limits"

    @property
    def tag(self) -> str:
        return f"needs:{self.value}"


@dataclass(frozen=True)
class Variable:
    """One target variable: its meaning, whether a configured target must give it, what it enables."""

    name: str
    meaning: str
    required: bool = False
    capability: Capability | None = None
    secret: bool = False
    reference: str = ""  # what the reference platform fills in
    example: str = ""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name


VARIABLES: tuple[Variable, ...] = (
    Variable("AUTH_URL", "auth service base URL (`/auth/register`, `/auth/login`, JWKS)", required=True,
             reference="started on a free port", example="https://auth.example.test"),
    Variable("BACKEND_URL", "backend base URL (`/health`, `/threads`, `/workspaces`)", required=True,
             reference="started on a free port", example="https://api.example.test"),
    Variable("WS_URL", "agent WebSocket (default: `BACKEND_URL` with `ws(s)://` and `/ws`)",
             reference="derived", example="wss://api.example.test/ws"),
    Variable("AUTH_DATABASE_URL", "auth PostgreSQL database (workspace counts of the cross-service "
             "transaction; cleanup deletes the run's users)", capability=Capability.AUTH_DB, secret=True,
             reference="embedded PostgreSQL", example="postgresql://tester:pw@db:5432/auth"),
    Variable("BACKEND_DATABASE_URL", "backend PostgreSQL database (isolation oracle rows, scratch "
             "databases for the transaction suite)", capability=Capability.DB, secret=True,
             reference="embedded PostgreSQL", example="postgresql://tester:pw@db:5432/backend"),
    Variable("ANALYTICS_DATABASE_URL", "analytics store of the cross-service transaction "
             "(default: `BACKEND_DATABASE_URL` with database `analytics`)",
             capability=Capability.ANALYTICS_DB, secret=True, reference="embedded PostgreSQL",
             example="postgresql://tester:pw@db:5432/analytics"),
    Variable("REDIS_URL", "Redis (sessions, caches; `SCAN` and reads of per-user keys)",
             capability=Capability.REDIS, secret=True, reference="embedded Redis",
             example="redis://:pw@cache:6379/0"),
    Variable("JWT_PRIVATE_KEY", "the platform's signing key (PEM file), checked against the JWKS; "
             "signs tokens whose only flaw is one bad claim", capability=Capability.SIGNING_KEY,
             reference="generated per start", example="/secrets/jwt-signing.pem"),
    Variable("JWT_ISSUER", "expected `iss` of access tokens (unset: `iss` is not checked)",
             reference="crosstalk-auth"),
    Variable("JWT_AUDIENCE", "expected `aud` of access tokens (unset: `aud` is not checked)",
             reference="crosstalk-backend"),
    Variable("FAULT_INJECTION", "`off` never uses the failure-injection hook; otherwise probed: the target's "
             "`/health` advertises `capabilities.fault_injection` and honours `X-Crosstalk-Inject`",
             capability=Capability.FAULT_INJECTION, reference="on (started with --test-hooks)",
             example="off"),
    Variable("METRICS_URL", "Prometheus text endpoints (comma-separated, one per service) with "
             "`process_cpu_seconds_total` and `process_resident_memory_bytes`; default: the paths the "
             "target advertises in `/health` `capabilities.metrics`", capability=Capability.METRICS,
             reference="local process table", example="https://api.example.test/metrics/prometheus"),
    Variable("PLATFORM_CORES", "CPU cores of the platform's machine(s), for CPU percentages from "
             "`METRICS_URL` (without it a remote platform's CPU % is not judged)",
             capability=None, reference="this machine's", example="8"),
    Variable("MAX_FRAME_BYTES", "largest WebSocket frame the platform accepts",
             capability=Capability.LIMITS, reference="65536", example="65536"),
    Variable("OVERSIZED_FRAME_BYTES", "size of the frame the security suite expects refused "
             "(default: 1.5 x `MAX_FRAME_BYTES`)", capability=Capability.LIMITS, reference="100000"),
    Variable("FLOOD_SIZE", "messages sent back to back that must trip the rate limit",
             capability=Capability.LIMITS, reference="120", example="120"),
    Variable("FRAME_SCHEMA", "AsyncAPI document every received WebSocket frame is validated against "
             "(default: `docs/contract/asyncapi.yaml`; `off` disables validation)",
             reference="docs/contract/asyncapi.yaml", example="contract/our-asyncapi.yaml"),
    Variable("REFERENCE_STATE", "state file of a reference platform started by hand (`python -m "
             "reference_platform --state-file F`): attach to it as the reference, faults and all",
             example="results/platform.json"),
    Variable("REQUIRE_TARGET", "fail the suite setup with this text unless a target is configured "
             "(`resources/env/external.py` sets it when its URLs are missing): never fall back to the "
             "reference platform", example="1"),
    Variable("PROFILE", "target profile (what the contract leaves open), a file path",
             reference="the reference profile", example="profiles/ourplatform.yaml"),
    Variable("RUN_PREFIX", "prefix of everything this run creates on the target (default: generated)",
             example="ct-nightly-"),
    Variable("CLEANUP", "`off` keeps what the run created (default: removed at the end of the run)",
             example="off"),
)
BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}

# names that were read from the plain environment before CROSSTALK_* existed
LEGACY_ENVIRONMENT = frozenset(
    {"AUTH_URL", "BACKEND_URL", "WS_URL", "AUTH_DATABASE_URL", "BACKEND_DATABASE_URL", "REDIS_URL"}
)

CAPABILITY_VARIABLES: dict[Capability, tuple[str, ...]] = {
    Capability.DB: ("BACKEND_DATABASE_URL",),
    Capability.AUTH_DB: ("AUTH_DATABASE_URL",),
    Capability.ANALYTICS_DB: ("ANALYTICS_DATABASE_URL",),
    Capability.REDIS: ("REDIS_URL",),
    Capability.SIGNING_KEY: ("JWT_PRIVATE_KEY",),
    Capability.FAULT_INJECTION: ("FAULT_INJECTION",),
    Capability.METRICS: ("METRICS_URL",),
    Capability.LIMITS: ("OVERSIZED_FRAME_BYTES", "FLOOD_SIZE"),
}


class ConfigurationError(AssertionError):
    """A one-line, actionable configuration error (fails the suite setup)."""

    ROBOT_SUPPRESS_NAME = True


def how_to_set(name: str) -> str:
    """``--variable NAME:...`` / ``CROSSTALK_NAME`` - the two usual ways, for messages."""
    return f"--variable {name}:... or {ENV_PREFIX}{name}"


def is_off(value: str | None) -> bool:
    return value is not None and value.strip().lower() in OFF


@dataclass(frozen=True)
class Resolved:
    """A resolved value and its source: ``variable``, ``CROSSTALK_X``, ``X``, ``reference``, ``default``."""

    value: str
    source: str


def resolve(
    name: str,
    robot: Mapping[str, Any],
    environ: Mapping[str, str],
    fallback: Mapping[str, str] | None = None,
    legacy: bool = True,
) -> Resolved:
    """Apply the precedence rule to one variable.

    ``robot`` holds the values given with ``--variable`` / variable files (Robot's
    global scope), ``environ`` the process environment, ``fallback`` the reference
    platform's values or defaults.  ``legacy`` allows the plain ``NAME`` environment
    variable (only for a configured target: a stray ``REDIS_URL`` in the shell must not
    redirect the reference platform's checks).

    Example:
        resolve("REDIS_URL", {}, {"CROSSTALK_REDIS_URL": "redis://h"}).value == "redis://h"
    """
    value = robot.get(name)
    if value not in (None, ""):
        return Resolved(str(value), "variable")
    value = environ.get(ENV_PREFIX + name)
    if value:
        return Resolved(value, ENV_PREFIX + name)
    if legacy and name in LEGACY_ENVIRONMENT:
        value = environ.get(name)
        if value:
            return Resolved(value, name)
    if fallback and fallback.get(name):
        return Resolved(str(fallback[name]), "reference")
    return Resolved("", "default")


def ws_from_backend(backend_url: str) -> str:
    parts = urlsplit(backend_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


def analytics_from_backend(backend_database_url: str) -> str:
    parts = urlsplit(backend_database_url)
    return urlunsplit(parts._replace(path="/analytics"))


@dataclass
class CapabilityState:
    available: bool
    reason: str = ""  # why not (one line naming the variable that would enable it)
    detail: str = ""  # what enabled it (e.g. "key kid abc matches the JWKS")


def is_configured(robot: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    """True when a target is configured (``AUTH_URL`` or ``BACKEND_URL`` resolves, no ``REFERENCE_STATE``)."""
    if resolve("REFERENCE_STATE", robot, environ).value:
        return False
    return any(resolve(name, robot, environ).value for name in ("AUTH_URL", "BACKEND_URL"))


def static_capabilities(values: Mapping[str, str], reference: bool) -> dict[Capability, CapabilityState]:
    """Capabilities from the values alone (no network): what is set, off or missing.

    Probes (connecting, checking the key against the JWKS) may later turn an
    available capability into an absent one with its reason.

    Example:
        static_capabilities({"REDIS_URL": "off"}, reference=True)[Capability.REDIS].available is False
    """
    states: dict[Capability, CapabilityState] = {}
    for capability, names in CAPABILITY_VARIABLES.items():
        off = [n for n in names if is_off(values.get(n))]
        missing = [n for n in names if not values.get(n)]
        if capability is Capability.LIMITS and not reference and values.get("MAX_FRAME_BYTES"):
            missing = [n for n in missing if n != "OVERSIZED_FRAME_BYTES"]
        if off:
            states[capability] = CapabilityState(
                False, f"{' and '.join(off)} {'is' if len(off) == 1 else 'are'} off: give "
                f"{_enable(names)} to run {capability.tag} tests")
        elif missing:
            states[capability] = CapabilityState(False, f"set {_enable(missing)}")
        else:
            states[capability] = CapabilityState(True, detail=", ".join(names))
    return states


def _enable(names: tuple[str, ...] | list[str]) -> str:
    return " and ".join(f"{n} ({ENV_PREFIX}{n})" for n in names)


@dataclass
class SkipRecord:
    test: str
    capability: str
    reason: str


@dataclass
class TargetContext:
    """The resolved target of this process: values, their sources, mode, capabilities, profile.

    Example:
        ctx = context.current()
        if not ctx.has(Capability.REDIS): ...
    """

    values: dict[str, str]
    sources: dict[str, str]
    configured: bool
    faults: list[str] = field(default_factory=list)
    capabilities: dict[Capability, CapabilityState] = field(default_factory=dict)
    reference_state: dict = field(default_factory=dict)
    reference_log: str = ""
    run_prefix: str = ""
    profile: Any = None  # filled by crosstalk.profile (PROFILE) through PROFILE_LOADER
    versions: dict[str, str] = field(default_factory=dict)
    skipped: list[SkipRecord] = field(default_factory=list)
    created_users: list[Any] = field(default_factory=list)
    created_workspaces: list[tuple[Any, str]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # incomplete evidence of the running test
    signing_key: Any = None  # the RSA private key checked against the JWKS (signing-key capability)
    signing_kid: str | None = None
    _down_cache: tuple[float, str] = (-1e9, "")

    # -------------------------------------------------------------- values
    def get(self, name: str, default: str = "") -> str:
        """The resolved value of ``name`` ('' for off)."""
        value = self.values.get(name, "")
        return default if not value or is_off(value) else value

    def email(self, label: str) -> str:
        """A fresh email carrying the run prefix: ``<prefix><label>-<hex>@crosstalk.test``."""
        return f"{self.run_prefix}{label}-{secrets.token_hex(4)}@crosstalk.test".lower()

    def record_user(self, user: Any) -> None:
        """Remember a registered user for the end-of-run cleanup (and in the crash ledger)."""
        self.created_users.append(user)
        from crosstalk import cleanup

        with contextlib.suppress(OSError):  # a read-only checkout: the in-process cleanup still works
            cleanup.record(self.run_prefix, user)

    def int(self, name: str, default: int) -> int:
        value = self.get(name)
        if not value:
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigurationError(
                f"{name} '{value}' is not a whole number: fix {how_to_set(name)}.") from None

    @property
    def mode(self) -> str:
        return "configured target" if self.configured else "reference platform"

    # -------------------------------------------------------------- capabilities
    def has(self, capability: Capability | str) -> bool:
        state = self.capabilities.get(Capability(capability))
        return bool(state and state.available)

    def reason(self, capability: Capability | str) -> str:
        state = self.capabilities.get(Capability(capability))
        if state is None:
            return f"{Capability(capability).value}: unknown capability state"
        return state.reason

    def require(self, capability: Capability | str, test: str = "") -> None:
        """Skip the running test (``SkipExecution``) when ``capability`` is absent, naming the variable."""
        if self.has(capability):
            return
        self.skip(capability, f"needs {Capability(capability).value}: {self.reason(capability)}", test)

    def skip(self, capability: Capability | str, reason: str, test: str = "") -> None:
        """Record the skip for the end-of-run summary and skip the running test with ``reason``."""
        from robot.api.exceptions import SkipExecution

        if not test and _in_robot():
            from robot.libraries.BuiltIn import BuiltIn

            test = str(BuiltIn().get_variable_value("${TEST NAME}", "") or "")
        self.skipped.append(SkipRecord(test, Capability(capability).value, reason))
        raise SkipExecution(reason)

    def incomplete(self, capability: Capability | str, what: str) -> None:
        """Note that the running test's check lacked ``what`` because ``capability`` is absent.

        The check still runs on the evidence it has (and fails on what it finds there),
        but a test that would pass ends SKIPPED with this reason: no verdict without evidence.
        """
        capability = Capability(capability)
        reason = f"{what} not checked: needs {capability.value}: {self.reason(capability)}"
        if reason not in self.pending:
            self.pending.append(reason)

    def missing_for(self, tags: list[str] | tuple[str, ...]) -> tuple[Capability, str] | None:
        """The first ``needs:*`` tag among ``tags`` whose capability is absent, with its reason."""
        for tag in tags:
            if not str(tag).lower().startswith("needs:"):
                continue
            name = str(tag)[6:].strip().lower()
            try:
                capability = Capability(name)
            except ValueError:
                return None, f"unknown capability tag '{tag}': use one of " + ", ".join(
                    c.tag for c in Capability)  # type: ignore[return-value]
            if not self.has(capability):
                return capability, f"needs {capability.value}: {self.reason(capability)}"
        return None

    # -------------------------------------------------------------- reporting
    def masked(self) -> dict[str, str]:
        from crosstalk.secrets import mask_url

        shown = {}
        for name, value in self.values.items():
            variable = BY_NAME.get(name)
            if variable is None or not value:
                continue
            shown[name] = mask_url(value) if variable.secret or "://" in value else value
        return shown

    def describe(self) -> str:
        """One line naming the target (URLs masked), for logs and report metadata."""
        where = f"{self.get('AUTH_URL')} + {self.get('BACKEND_URL')}"
        if self.configured:
            return f"configured target {where}"
        faults = ", ".join(self.faults) or "none"
        return f"reference platform {where} (faults planted: {faults})"

    def capability_summary(self) -> str:
        parts = []
        for capability in Capability:
            state = self.capabilities.get(capability)
            if state is None:
                continue
            parts.append(f"{capability.value}: {'yes' if state.available else 'no'}")
        return ", ".join(parts)

    def skip_summary(self) -> list[str]:
        """Lines 'N test(s) skipped: reason' grouped by reason, most frequent first."""
        counts: dict[str, list[str]] = {}
        for record in self.skipped:
            tests = counts.setdefault(record.reason, [])
            if record.test not in tests or not record.test:
                tests.append(record.test)
        lines = []
        for reason, tests in sorted(counts.items(), key=lambda item: -len(item[1])):
            lines.append(f"{len(tests)} test{'s' if len(tests) != 1 else ''} skipped: {reason}")
        return lines

    # -------------------------------------------------------------- platform death
    def death_note(self) -> str:
        """'' while the platform is alive; else which reference service died, how, and where its log is.

        For a configured target (no process table to look at) it asks ``/health`` and the
        JWKS once, with a short timeout, and names the service that no longer answers.
        """
        if self.reference_state and not self.configured:
            from crosstalk.sharedplatform import describe_death

            return describe_death(self.reference_state, self.reference_log)
        if not self.configured:
            return ""
        checked_at, note = self._down_cache
        if time.monotonic() - checked_at < DOWN_CACHE_S:
            return note  # a run of failures against a dead target asks once, not once per test
        note = self._ask_target()
        self._down_cache = (time.monotonic(), note)
        return note

    def _ask_target(self) -> str:
        import requests

        down = []
        for name, path in (("BACKEND_URL", "/health"), ("AUTH_URL", "/.well-known/jwks.json")):
            url = self.get(name)
            if not url:
                continue
            try:
                status = requests.get(url.rstrip("/") + path, timeout=2).status_code
            except requests.RequestException as exc:
                down.append(f"{name} {url} no longer answers {path} ({type(exc).__name__})")
                continue
            if status >= 500:
                down.append(f"{name} {url} answers {path} with {status}")
        return "; ".join(down) + (": the target's service is down" if down else "")

    def explain(self, message: str) -> str:
        """``message`` with the platform's death appended when a reference service died."""
        note = self.death_note()
        return f"{message} - {note}" if note else message


# ---------------------------------------------------------------------- process-wide context
_CURRENT: TargetContext | None = None
# (PROFILE path or '') -> profile object; default: crosstalk.profile.load when that module exists
PROFILE_LOADER: Callable[[str], Any] | None = None
# extra probes (e.g. the contract's failure-injection hook): capability -> fn(ctx) -> CapabilityState
PROBES: dict[Capability, Callable[[TargetContext], CapabilityState]] = {}


def current() -> TargetContext:
    """The context of this process; resolved from Robot variables and the environment if not set yet.

    Without `Start Or Attach Platform` having run, this resolves without starting
    anything (a library used on its own with explicit URLs).
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    robot = robot_globals()
    ctx = build(robot, os.environ)
    if _in_robot():
        _CURRENT = ctx  # outside Robot (pytest, scripts) the environment may change: resolve each time
    return ctx


def test_message(text: str) -> None:
    """Append ``text`` to the running test's message (report.html shows it); no-op outside a test."""
    if not _in_robot():
        return
    from robot.libraries.BuiltIn import BuiltIn

    with contextlib.suppress(RuntimeError):
        BuiltIn().set_test_message(text, append=True)


def _in_robot() -> bool:
    try:
        from robot.running.context import EXECUTION_CONTEXTS
    except ImportError:
        return False
    return EXECUTION_CONTEXTS.current is not None


def peek() -> TargetContext | None:
    return _CURRENT


def install(ctx: TargetContext | None) -> None:
    """Make ``ctx`` this process's context (``None`` forgets it)."""
    global _CURRENT
    _CURRENT = ctx


def robot_globals() -> dict[str, Any]:
    """``--variable`` and variable-file values (Robot's global scope, not suite variable tables)."""
    try:
        from robot.libraries.BuiltIn import BuiltIn
        from robot.running.context import EXECUTION_CONTEXTS
    except ImportError:
        return {}
    if EXECUTION_CONTEXTS.current is None:
        return {}
    scopes = BuiltIn()._variables
    store = getattr(scopes, "_global", None) or scopes.current
    values = {}
    for variable in VARIABLES:
        value = store.get("${%s}" % variable.name, None)  # noqa: UP031
        if value not in (None, ""):
            values[variable.name] = value
    return values


def new_run_prefix() -> str:
    """``ct<yymmddHHMM><4 hex>-``: short, sortable, unique enough across parallel processes."""
    return f"ct{time.strftime('%y%m%d%H%M', time.gmtime())}{secrets.token_hex(2)}-"


def build(
    robot: Mapping[str, Any],
    environ: Mapping[str, str],
    reference: Mapping[str, str] | None = None,
) -> TargetContext:
    """Resolve every variable (precedence rule), derive defaults and static capabilities. No network.

    ``reference`` holds the reference platform's values when it was started (not configured);
    then a stray plain ``REDIS_URL`` etc. in the shell is ignored.

    Example:
        ctx = build({"AUTH_URL": "http://a", "BACKEND_URL": "http://b"}, {})
        ctx.get("WS_URL") == "ws://b/ws"
    """
    configured = is_configured(robot, environ)
    fallback = {} if configured else dict(reference or {})
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for variable in VARIABLES:
        resolved = resolve(variable.name, robot, environ, fallback, legacy=configured or reference is None)
        values[variable.name], sources[variable.name] = resolved.value, resolved.source
    profile = None
    loader = profile_loader()
    if loader is not None:
        profile = loader(values["PROFILE"] if not is_off(values["PROFILE"]) else "")
        # a profile may name values too (limits, issuer, audience ...): they fill what nobody gave
        given = getattr(profile, "variables", None)
        if isinstance(given, Mapping):
            for name, value in given.items():
                if name in BY_NAME and sources.get(name) == "default" and value not in (None, ""):
                    values[name], sources[name] = str(value), "profile"
    if values["BACKEND_URL"] and not values["WS_URL"]:
        values["WS_URL"], sources["WS_URL"] = ws_from_backend(values["BACKEND_URL"]), "derived"
    backend_db = values["BACKEND_DATABASE_URL"]
    if not values["ANALYTICS_DATABASE_URL"] and backend_db and not is_off(backend_db):
        values["ANALYTICS_DATABASE_URL"] = analytics_from_backend(backend_db)
        sources["ANALYTICS_DATABASE_URL"] = "derived"
    frame = values["MAX_FRAME_BYTES"]
    if not values["OVERSIZED_FRAME_BYTES"] and frame and not is_off(frame):
        try:
            values["OVERSIZED_FRAME_BYTES"] = str(int(int(frame) * 1.5))
            sources["OVERSIZED_FRAME_BYTES"] = "derived"
        except ValueError:
            pass
    if not values["RUN_PREFIX"]:
        values["RUN_PREFIX"] = environ.get("CROSSTALK_RUN_ID", "") or new_run_prefix()
        sources["RUN_PREFIX"] = "generated"
    ctx = TargetContext(values, sources, configured, run_prefix=values["RUN_PREFIX"], profile=profile)
    ctx.capabilities = static_capabilities(values, reference=not configured)
    return ctx


def profile_loader() -> Callable[[str], Any] | None:
    """``PROFILE_LOADER`` if set, else ``crosstalk.profile.load`` when that module exists.

    The profile module owns what the contract leaves open; the context only carries
    the path (``PROFILE``, '' for the reference profile) and the loaded object.
    """
    if PROFILE_LOADER is not None:
        return PROFILE_LOADER
    try:
        from crosstalk import profile  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(profile, "load", None)


def reference_values(state: Mapping[str, Any], key_file: Path | None) -> dict[str, str]:
    """The variable values a running reference platform provides (from its state file)."""
    frame = int(state.get("max_frame_bytes") or 65536)
    burst = int(state.get("rate_limit_burst") or 20)
    return {
        "AUTH_URL": str(state.get("auth_url") or ""),
        "BACKEND_URL": str(state.get("backend_url") or ""),
        "WS_URL": str(state.get("ws_url") or ""),
        "AUTH_DATABASE_URL": str(state.get("auth_database_url") or ""),
        "BACKEND_DATABASE_URL": str(state.get("backend_database_url") or ""),
        "ANALYTICS_DATABASE_URL": str(state.get("analytics_database_url") or ""),
        "REDIS_URL": str(state.get("redis_url") or ""),
        "JWT_PRIVATE_KEY": str(key_file) if key_file and key_file.is_file() else "",
        "JWT_ISSUER": str(state.get("issuer") or ""),
        "JWT_AUDIENCE": str(state.get("audience") or ""),
        "FAULT_INJECTION": "on",
        "METRICS_URL": "local",
        "MAX_FRAME_BYTES": str(frame),
        "OVERSIZED_FRAME_BYTES": str(max(100000, frame + frame // 2)),
        "FLOOD_SIZE": str(max(120, burst * 6)),
    }

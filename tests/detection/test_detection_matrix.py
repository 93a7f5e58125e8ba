"""The detection matrix: every fault switch of the reference platform makes the
check that guards against it fail, for the right reason; with no fault switched
on, the same checks pass.

For each registered fault the platform is started once with only that fault on
(`python -m reference_platform --auth-port 0 --backend-port 0 --state-file …`),
robot runs only the tags that should catch it against that platform (its state
file is passed as ``REFERENCE_STATE``, so `CrosstalkPlatform` attaches to it as the
reference instead of starting another platform), and `output.xml` is read back
with `robot.api.ExecutionResult`.
A fault is *detected* when the expected test failed and its message contains the
key phrase.  The table is printed at the end of the pytest run and written to
`results/detection/matrix.md`; `docs/detection.md` explains how to read it.

The isolation and security rows run a second time against the platform in
variant mode (`REFPLAT_VARIANT=1`: other names, types, event fields, limits and a
model-like agent) with its profile (`--variable PROFILE:variant`), so the checks
are shown to catch their faults on a platform that is not shaped like ours.

Run only the matrix: `pytest -m detection`; skip it: `pytest -m "not detection"`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from crosstalk.launcher import Launched, PlatformError, launch, write_signing_key
from robot.api import ExecutionResult, ResultVisitor

from tests.robotrun import run_robot_process

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "detection"
BASELINE = "baseline"
# Two cores: the platform under test and robot share them, so two faults at a time.
PARALLEL = int(os.environ.get("DETECTION_PARALLEL", "2"))
PLATFORM_START_TIMEOUT = 120.0
ROBOT_TIMEOUT = 360.0
TARGET_VARIABLES = {
    "AUTH_URL": "auth_url",
    "BACKEND_URL": "backend_url",
    "WS_URL": "ws_url",
    "AUTH_DATABASE_URL": "auth_database_url",
    "BACKEND_DATABASE_URL": "backend_database_url",
    "REDIS_URL": "redis_url",
}

pytestmark = pytest.mark.detection


@dataclass(frozen=True)
class Row:
    """One line of the matrix: the fault, the tags that must catch it, the test
    that must fail and a phrase its failure message must contain."""

    fault: str
    tags: tuple[str, ...]
    test: str
    phrase: str


# fault -> tags to run -> expected failing test -> key phrase of its message
MATRIX: tuple[Row, ...] = (
    Row("crosstalk", ("eventsANDisolation",), "Events Reach Only Their User", "Isolation violated"),
    Row("shared_context", ("tools",), "Tool Results Only Draw On The Caller's Data",
        "holds data that is not"),
    Row("bola_rest", ("bola",), "Another User's Thread Is Invisible Over REST",
        "answered HTTP 200 instead of 404"),
    Row("bola_ws", ("bola",), "Another User's Thread Is Refused In WebSocket Frames",
        "was not refused with thread_not_found"),
    Row("drop_event", ("order",), "Fifty Simultaneous Connections Keep Their Own Ordered Events",
        "break the contract"),
    Row("reorder_events", ("order",), "Fifty Simultaneous Connections Keep Their Own Ordered Events",
        "break the contract"),
    Row("logout_no_revoke", ("revocation",), "Access Token Is Dead After Logout",
        "with the access token after logout answered HTTP 200"),
    Row("logout_keeps_refresh", ("revocation",), "Logout Ends The Whole Session",
        "refresh token after logout ("),
    Row("refresh_reuse", ("revocation",), "Reused Refresh Token Revokes The Whole Family",
        "answered 200, expected 401"),
    Row("refresh_race", ("revocation",), "Concurrent Refreshes Of One Token Have One Winner",
        "concurrent attempts won, exactly one must"),
    Row("jwt_alg_none", ("authentication",), "Missing And Forged Tokens Are Refused",
        "with the alg none token answered HTTP 200"),
    Row("jwt_hs256_confusion", ("authentication",), "Missing And Forged Tokens Are Refused",
        "with the hs256 confusion token answered HTTP 200"),
    Row("jwt_accept_expired", ("authentication",), "Properly Signed Tokens With Bad Claims Are Refused",
        "with the expired token answered HTTP 200"),
    Row("ws_origin_unchecked", ("cswsh",), "Cross-Site WebSocket Hijacking Is Refused",
        "was accepted: expected HTTP 403"),
    Row("session_leak", ("sessions",), "Closed Connections Leave No Session Behind",
        "sessions are not removed when their socket closes"),
    Row("connection_leak", ("sessions",), "Closed Connections Free Their Server Resources",
        "closed sockets are still held by the server"),
    Row("no_rate_limit", ("resource-limits",), "A Message Flood Is Throttled Without Slowing Others",
        "no rate_limited error"),
    Row("no_frame_limit", ("resource-limits",), "An Oversized Frame Is Refused Without Harming Others",
        "was neither refused with frame_too_large nor closed with 1009"),
    Row("sql_concat", ("input",), "Hostile Content Is Stored And Returned Verbatim",
        "ended failed instead of completed"),
    Row("hostile_input_500", ("hostile-input",), "Hostile Input Gets A Clear Refusal And Harms No One",
        "answered HTTP 500 naming internals"),
    Row("lost_update", ("counter",), "Fifty Parallel Notes Are All Counted", "lost update"),
    Row("cache_key_collision", ("cacheANDisolation",), "Cached Thread Lists Never Cross Users",
        "thread lists crossed users"),
    Row("redis_cancel_leak", ("chatgpt-incident",),
        "Hanging Up Mid-Request Never Hands Titles To Another User", "Redis reply leak"),
    Row("no_rollback", ("rollback",), "A Backend Failure Rolls Everything Back",
        "partially applied cross-service transaction"),
    # issue 11: realistic bugs of the classes an independent fault set slipped past the suites
    Row("identity_from_frame", ("identity",), "Identity Fields In Chat Frames Are Ignored",
        "identity taken from the request, not the token"),
    Row("identity_from_body", ("identity",), "Identity Fields In Request Bodies Are Ignored",
        "is listed for bob"),
    Row("token_in_query", ("credentials",), "Only The Authorization Header Carries Credentials",
        "via query ?access_token= answered 101"),
    Row("login_enumeration", ("enumeration",), "Login Does Not Tell Which Emails Exist",
        "login timing tells which emails exist"),
    Row("message_wrong_thread", ("persistenceANDstored-truth",),
        "Streamed Answers Are Stored In Their Own Threads", "stored truth differs from streamed truth"),
    Row("stale_list_after_delete", ("deleteANDstored-truth",),
        "A Deleted Thread Is Gone From Every View At Once", "still lists it"),
    Row("counter_two_writers", ("multi-writer",), "Counters Stay Exact Under Different Writers At Once",
        "lost update"),
    Row("prepared_xact_leak", ("debris",), "A Failed Workspace Transaction Leaves No Debris",
        "transaction debris after a failed workspace"),
    Row("scan_all_keys", ("cost-growth",), "Chat Cost Does Not Grow With Other Users' Data",
        "cost grows with other users' data"),
    Row("event_timestamp_drift", ("smoke",), "Two Users Each Get An Answer To Their Own Question",
        "breaks the platform contract"),
    Row("unfair_scheduling", ("performanceANDconcurrency",),
        "Twelve Users Get Fast, Fair And Isolated Answers", "fairness"),
    # failure injections, not bugs: the plain success scenario must notice the broken step
    Row("workspace_backend_fail", ("workspaceNOTrollbackNOTdetectionNOTconcurrency",),
        "A Workspace Is Recorded In All Three Stores", "'failed_step': 'backend'"),
    Row("workspace_analytics_fail", ("workspaceNOTrollbackNOTdetectionNOTconcurrency",),
        "A Workspace Is Recorded In All Three Stores", "'failed_step': 'analytics'"),
)
ROWS = {row.fault: row for row in MATRIX}
# The isolation and security rows, run again against the variant-mode platform with its profile.
VARIANT_FAULTS = (
    "crosstalk", "shared_context", "bola_rest", "bola_ws", "cache_key_collision",
    "logout_no_revoke", "logout_keeps_refresh", "refresh_reuse", "refresh_race", "jwt_alg_none",
    "jwt_hs256_confusion",
    "jwt_accept_expired", "ws_origin_unchecked", "session_leak", "connection_leak", "no_rate_limit",
    "no_frame_limit", "sql_concat",
    "lost_update",  # the counter: message_count counts only user messages in variant mode
)
VARIANT_PREFIX = "variant-"
assert all(row.phrase for row in MATRIX), "every row needs a key phrase: failing is not enough"


def registered_faults() -> list[str]:
    """Every fault name in the platform's registry (`reference_platform/faults.py`)."""
    from reference_platform import faults

    for attribute in ("FAULTS", "REGISTRY", "ALL_FAULTS", "KNOWN_FAULTS"):
        registry = getattr(faults, attribute, None)
        if registry:
            return sorted(registry)
    raise AssertionError(
        "reference_platform/faults.py exposes no fault registry (FAULTS, REGISTRY, ALL_FAULTS or "
        "KNOWN_FAULTS): the detection matrix cannot tell which faults it must cover."
    )


# ---------------------------------------------------------------- running

@dataclass
class Outcome:
    """What happened to one fault (or the baseline) in this run."""

    fault: str
    detected: bool = False
    reason: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # test name -> message
    passed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    outdir: Path | None = None


class Platform:
    """The reference platform started by the launcher with the given faults on."""

    def __init__(self, faults: list[str], workdir: Path, variant: bool = False):
        self.faults = faults
        self.variant = variant
        self.workdir = workdir
        self.state_file = workdir / "platform.json"
        self.log_file = workdir / "platform.log"
        self.launched: Launched | None = None
        self.state: dict = {}

    def __enter__(self) -> Platform:
        # the matrix's platforms use embedded stores of their own, never the caller's servers
        self.launched = launch(self.state_file, self.log_file, faults=self.faults, variant=self.variant,
                               private_key=signing_key(), drop_env=[*TARGET_VARIABLES, "DATABASE_URL"],
                               cwd=ROOT)
        try:
            self.state = self.launched.wait_until_up(PLATFORM_START_TIMEOUT)
            self._check_faults()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _check_faults(self) -> None:
        # A platform that silently ignored the switch would make the row meaningless.
        active = sorted(self.state.get("faults") or [])
        if active != sorted(self.faults):
            raise RuntimeError(f"platform started with faults {active}, expected {sorted(self.faults)}")

    def __exit__(self, *exc) -> None:
        if self.launched is not None:
            with contextlib.suppress(PlatformError):
                self.launched.stop()

    def robot_variables(self) -> list[str]:
        # attach to this reference platform through its state file: the suites then know it is the
        # reference (faults, limits, resource metrics, failure injection) and start nothing themselves
        arguments = ["--variable", f"REFERENCE_STATE:{self.state_file}"]
        # Tokens with a valid signature but a bad claim (expired, wrong aud…) need the signing key.
        arguments += ["--variable", f"JWT_PRIVATE_KEY:{signing_key()}"]
        # the profile the platform names (its state file names it too): variant mode needs variant.yaml
        return [*arguments, "--variable", f"PROFILE:{self.state.get('profile') or 'reference'}"]


def signing_key() -> Path:
    """One RSA key for every platform of the matrix, so the suites can sign tokens with bad claims."""
    path = RESULTS / "jwt-private-key.pem"
    if not path.exists():
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_signing_key(path)
    return path


class _Tests(ResultVisitor):
    def __init__(self):
        self.tests = []

    def visit_test(self, test):
        self.tests.append(test)


def run_robot(platform: Platform, tags: list[str], outdir: Path, exclude: list[str] = (),
              exit_on_failure: bool = False) -> list:
    """Runs the suites selected by `tags` (minus `exclude`) against `platform`; returns the result tests."""
    command = [sys.executable, "-m", "robot", "--outputdir", str(outdir), "--output", "output.xml",
               "--log", "log.html", "--report", "NONE", "--console", "quiet",
               *platform.robot_variables(), *(["--exitonfailure"] if exit_on_failure else [])]
    for tag in tags:
        command += ["--include", tag]
    for tag in exclude:
        command += ["--exclude", tag]
    command.append(str(ROOT / "suites"))
    env = {k: v for k, v in os.environ.items()
           if k not in TARGET_VARIABLES
           and k not in ("REFPLAT_FAULTS", "REFPLAT_VARIANT", "CROSSTALK_PROFILE")}
    exit_code = run_robot_process(command, ROOT, env, outdir / "robot.log", ROBOT_TIMEOUT)
    if exit_code is None:
        raise RuntimeError(f"robot did not finish within {ROBOT_TIMEOUT:.0f} s (tags {tags}); "
                           f"partial output in {outdir}")
    output = outdir / "output.xml"
    if not output.exists():
        tail = "\n".join((outdir / "robot.log").read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"robot wrote no {output} (exit code {exit_code}):\n{tail}")
    visitor = _Tests()
    ExecutionResult(str(output)).visit(visitor)
    return visitor.tests


def judge(row: Row, tests: list) -> tuple[bool, str]:
    """Whether `row.test` failed with `row.phrase` in its message, and why not."""
    matching = [test for test in tests if test.name == row.test]
    if not matching:
        return False, f"test '{row.test}' did not run with tags {list(row.tags)}"
    test = matching[0]
    if test.status != "FAIL":
        verdict = {"PASS": "passed", "SKIP": "was skipped"}.get(test.status, test.status)
        return False, f"test '{row.test}' {verdict}: the fault went unnoticed"
    if row.phrase.lower() not in test.message.lower():
        return False, (f"test '{row.test}' failed for another reason: no '{row.phrase}' in "
                       f"message: {test.message[:300]}")
    return True, f"failed: {_first_line(test.message)}"


def _first_line(message: str, limit: int = 160) -> str:
    line = next((part for part in message.splitlines() if part.strip() and
                 not part.startswith("Several failures")), message)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_one(fault: str, tags: list[str], row: Row | None, variant: bool = False) -> Outcome:
    started = time.monotonic()
    outdir = RESULTS / (VARIANT_PREFIX + fault if variant else fault)
    outdir.mkdir(parents=True, exist_ok=True)
    for stale in ("output.xml", "log.html"):
        (outdir / stale).unlink(missing_ok=True)
    outcome = Outcome(fault=fault, outdir=outdir)
    try:
        with Platform([] if fault == BASELINE else [fault], outdir, variant) as platform:
            tests = run_robot(platform, tags, outdir)
    except Exception as error:  # the row is reported as not detected, with the reason
        outcome.reason = f"{type(error).__name__}: {error}"
        outcome.seconds = time.monotonic() - started
        return outcome
    # a skipped check proves nothing, so the baseline counts it as a failure
    outcome.failed = {test.name: test.message or "skipped" for test in tests if test.status != "PASS"}
    outcome.passed = [test.name for test in tests if test.status == "PASS"]
    if row is None:
        outcome.detected = not outcome.failed and bool(outcome.passed)
        outcome.reason = (f"{len(outcome.passed)} tests passed" if outcome.detected else
                          "; ".join(f"'{name}': {_first_line(msg)}" for name, msg in outcome.failed.items())
                          or "no test ran")
    else:
        outcome.detected, outcome.reason = judge(row, tests)
    outcome.seconds = time.monotonic() - started
    return outcome


def all_tags() -> list[str]:
    return sorted({tag for row in MATRIX for tag in row.tags})


def variant_tags() -> list[str]:
    return sorted({tag for fault in VARIANT_FAULTS for tag in ROWS[fault].tags})


def run_matrix(faults: list[str], variant_faults: list[str] = ()) -> dict[str, Outcome]:
    """Every selected row (and a baseline), then the variant rows (keys prefixed ``variant-``)."""
    jobs = [(BASELINE, all_tags(), None, False)] if faults else []
    jobs += [(f, list(ROWS[f].tags), ROWS[f], False) for f in faults]
    if variant_faults:
        jobs += [(BASELINE, variant_tags(), None, True)]
        jobs += [(f, list(ROWS[f].tags), ROWS[f], True) for f in variant_faults]
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {pool.submit(run_one, *job): (VARIANT_PREFIX if job[3] else "") + job[0] for job in jobs}
        return {futures[future]: future.result() for future in concurrent.futures.as_completed(futures)}


def render(outcomes: dict[str, Outcome], faults: list[str], seconds: float,
           variant_faults: list[str] = ()) -> str:
    lines = ["| fault | tags run | catching test | key phrase | detected | seconds | evidence |",
             "|---|---|---|---|---|---|---|"]
    keys = [*faults, *(VARIANT_PREFIX + f for f in variant_faults)]
    for key in keys:
        fault = key.removeprefix(VARIANT_PREFIX)
        row, outcome = ROWS[fault], outcomes[key]
        others = sorted(name for name in outcome.failed if name != row.test)
        evidence = outcome.reason + (f" (also failed: {', '.join(others)})" if others else "")
        shown = f"`{fault}` (variant mode)" if key != fault else f"`{fault}`"
        lines.append(f"| {shown} | {', '.join(row.tags)} | {row.test} | `{row.phrase}` | "
                     f"{'yes' if outcome.detected else '**NO**'} | {outcome.seconds:.0f} | "
                     f"{_cell(evidence)} |")
    detected = sum(outcomes[k].detected for k in keys)
    lines.append("")
    if BASELINE in outcomes:
        baseline = outcomes[BASELINE]
        lines.append(f"Baseline (no fault, tags {', '.join(all_tags())}): "
                     f"{'all passed' if baseline.detected else 'FAILED'} — {_cell(baseline.reason)}")
    if variant_faults:
        variant = outcomes[VARIANT_PREFIX + BASELINE]
        lines.append(f"Baseline in variant mode (profile variant, tags {', '.join(variant_tags())}): "
                     f"{'all passed' if variant.detected else 'FAILED'} — {_cell(variant.reason)}")
    lines.append(f"Detection rate: {detected}/{len(keys)} = {100 * detected / max(len(keys), 1):.0f} %"
                 f" (wall time {seconds:.0f} s, {PARALLEL} in parallel)")
    return "\n".join(lines)


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 300 else text[:200] + " … " + text[-90:]


# ---------------------------------------------------------------- tests

def test_every_registered_fault_has_a_row():
    missing = sorted(set(registered_faults()) - set(ROWS))
    assert not missing, (f"fault(s) {missing} have no row in the detection matrix: add a Row to MATRIX in "
                         f"{Path(__file__).relative_to(ROOT)} naming the test that catches each one.")


def test_every_row_names_a_registered_fault():
    unknown = sorted(set(ROWS) - set(registered_faults()))
    assert not unknown, f"matrix rows for unknown fault(s) {unknown}: the platform's registry lacks them."


def test_judge_demands_the_right_failure():
    from types import SimpleNamespace as Result

    row = Row("bola_rest", ("bola",), "Thread Is Hidden", "instead of 404")
    message = "GET /threads/1 answered HTTP 200 instead of 404"
    failed = Result(name="Thread Is Hidden", status="FAIL", message=message)
    assert judge(row, [failed]) == (True, f"failed: {message}")
    passed = Result(name="Thread Is Hidden", status="PASS", message="")
    assert "went unnoticed" in judge(row, [passed])[1] and not judge(row, [passed])[0]
    other = Result(name="Thread Is Hidden", status="FAIL", message="Connection refused")
    assert "failed for another reason" in judge(row, [other])[1] and not judge(row, [other])[0]
    assert "did not run" in judge(row, [])[1] and not judge(row, [])[0]


def test_docs_list_every_row():
    docs = (ROOT / "docs" / "detection.md").read_text()
    missing = [row.fault for row in MATRIX if f"| `{row.fault}` |" not in docs or row.test not in docs]
    assert not missing, f"docs/detection.md has no up-to-date line for {missing}: add them to its table."


def test_every_security_test_is_shown_to_fail():
    from robot.api import TestSuiteBuilder

    suite = TestSuiteBuilder().build(str(ROOT / "suites" / "security.robot"))
    caught = {row.test for row in MATRIX}
    uncaught = [test.name for test in suite.all_tests if test.name not in caught]
    assert not uncaught, (f"security tests no fault switch is shown to break: {uncaught}; a check that "
                          f"never fails proves nothing: add a fault switch and a row for it.")


@pytest.fixture(scope="module")
def matrix(request) -> dict[str, Outcome]:
    faults = [fault for fault in registered_faults() if fault in ROWS]
    selected = os.environ.get("DETECTION_FAULTS")  # e.g. DETECTION_FAULTS=bola_rest,bola_ws for a quick look
    if selected:
        faults = [fault for fault in faults if fault in selected.split(",")]
    # DETECTION_VARIANT=0 leaves the variant-mode rows out, =only runs nothing else
    mode = os.environ.get("DETECTION_VARIANT", "1")
    variant_faults = [] if mode == "0" else [fault for fault in VARIANT_FAULTS if fault in faults]
    if mode == "only":
        faults = []
    signing_key()  # before the threads, so they never race to create it
    started = time.monotonic()
    outcomes = run_matrix(faults, variant_faults)
    table = render(outcomes, faults, time.monotonic() - started, variant_faults)
    (RESULTS / "matrix.md").write_text("# Detection matrix\n\n" + table + "\n")
    # conftest.py prints it in the terminal summary, after pytest's own report
    request.config.crosstalk_detection_matrix = table
    return outcomes


@pytest.mark.timeout(1500)
def test_baseline_passes_without_faults(matrix):
    if BASELINE not in matrix:
        pytest.skip("no reference row selected (DETECTION_VARIANT=only)")
    baseline = matrix[BASELINE]
    assert baseline.detected, (f"with no fault on, the matrix's checks must all pass, but: {baseline.reason} "
                               f"(see {baseline.outdir}/log.html)")


@pytest.mark.timeout(1500)
def test_variant_baseline_passes_without_faults(matrix):
    if VARIANT_PREFIX + BASELINE not in matrix:
        pytest.skip("no variant-mode row selected (DETECTION_VARIANT=0 or DETECTION_FAULTS)")
    baseline = matrix[VARIANT_PREFIX + BASELINE]
    assert baseline.detected, (f"in variant mode with no fault on, the checks must all pass (no false "
                               f"alarm), but: {baseline.reason} (see {baseline.outdir}/log.html)")


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("fault", VARIANT_FAULTS)
def test_fault_is_detected_in_variant_mode(matrix, fault):
    if VARIANT_PREFIX + fault not in matrix:
        pytest.skip(f"{fault} in variant mode is not selected (DETECTION_VARIANT=0 or DETECTION_FAULTS)")
    outcome = matrix[VARIANT_PREFIX + fault]
    assert outcome.detected, (f"fault {fault} not detected in variant mode: {outcome.reason} "
                              f"(see {outcome.outdir}/log.html)")


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("fault", [row.fault for row in MATRIX])
def test_fault_is_detected(matrix, fault):
    if fault not in matrix:
        pytest.skip(f"{fault} is not registered in reference_platform/faults.py or not selected "
                    "(DETECTION_FAULTS, DETECTION_VARIANT=only)")
    outcome = matrix[fault]
    assert outcome.detected, f"fault {fault} not detected: {outcome.reason} (see {outcome.outdir}/log.html)"

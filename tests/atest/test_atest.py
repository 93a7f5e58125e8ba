"""Acceptance tests of the libraries: tests/atest/*.robot run once against the session's reference platform.

Each Robot test becomes one pytest test (its status and message), and the leak report of
``leaky.robot`` - a suite whose teardown forgets to close - is asserted word for word.
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


def test_listener_closes_and_reports_what_a_suite_left_open(atest):
    warnings = [m.message for m in atest.errors.messages if m.level == "WARN"]
    leaks = [w for w in warnings if w.startswith("Suite 'Leaky' left ")]
    assert len(leaks) == 1, warnings
    assert leaks[0].startswith("Suite 'Leaky' left 3 resource(s) open after its teardown; Crosstalk closed "
                               "them: leaky#1 (UserConnection websocket), crosstalk_atest_leak_"), leaks[0]
    assert leaks[0].endswith("(CrosstalkTransactions scratch database), Redis 'leak' (CrosstalkStores store "
                             "connection)"), leaks[0]
    others = [w for w in warnings if " left " in w and "open after its teardown" in w and w not in leaks]
    assert not others, f"suites that close their own resources were reported as leaking: {others}"

"""Performance tests measure alone: two robot processes on one platform never overlap a performance test.

Process A runs a suite whose only test is tagged ``performance``; process B runs
ordinary tests at the same time.  From both output.xml files: no ordinary test of
B ran while A's performance test ran, and B's tests still ran side by side with
A's ordinary test (the lock is shared for them, not a queue for everything).
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime
from pathlib import Path

from robot.api import ExecutionResult

from tests.robotrun import run_robot_process

ROOT = Path(__file__).resolve().parents[2]

MEASURING = """*** Settings ***
Library       CrosstalkPlatform
Suite Setup   Start Or Attach Platform

*** Test Cases ***
Ordinary Test In A
    Sleep    1.5s
Measure Alone
    [Tags]    performance
    Sleep    2s
"""

ORDINARY = """*** Settings ***
Library       CrosstalkPlatform
Suite Setup   Start Or Attach Platform

*** Test Cases ***
Ordinary Test 1
    Sleep    0.7s
Ordinary Test 2
    Sleep    0.7s
Ordinary Test 3
    Sleep    0.7s
Ordinary Test 4
    Sleep    0.7s
Ordinary Test 5
    Sleep    0.7s
"""


def _window(test) -> tuple[datetime, datetime]:
    # the body's time: a test's own start time includes its wait for a turn on the platform
    step = next(item for item in test.body if item.type == "KEYWORD")
    return step.start_time, step.end_time


def test_a_performance_test_never_shares_the_platform(platform, tmp_path):
    runs = {}
    for name, text in (("measuring", MEASURING), ("ordinary", ORDINARY)):
        suite = tmp_path / f"{name}.robot"
        suite.write_text(text)
        runs[name] = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(ROOT / "libraries")}
    codes = {}

    def run(name: str) -> None:
        command = [sys.executable, "-m", "robot", "--console", "none", "--outputdir", str(runs[name]),
                   "--variable", f"REFERENCE_STATE:{platform.state_file}", str(tmp_path / f"{name}.robot")]
        codes[name] = run_robot_process(command, ROOT, env, tmp_path / f"{name}.log", 120)

    threads = [threading.Thread(target=run, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert codes == {"measuring": 0, "ordinary": 0}, (tmp_path / "ordinary.log").read_text()[-2000:]
    measuring = {t.name: t for t in ExecutionResult(str(runs["measuring"] / "output.xml")).suite.all_tests}
    ordinary = list(ExecutionResult(str(runs["ordinary"] / "output.xml")).suite.all_tests)
    alone_start, alone_end = _window(measuring["Measure Alone"])
    overlapping = [t.name for t in ordinary if _window(t)[0] < alone_end and _window(t)[1] > alone_start]
    assert not overlapping, f"{overlapping} ran while the performance test measured"
    shared_start, shared_end = _window(measuring["Ordinary Test In A"])
    side_by_side = [t.name for t in ordinary if _window(t)[0] < shared_end and _window(t)[1] > shared_start]
    assert side_by_side, "ordinary tests of the two processes never ran side by side"

"""run_crosstalk.py for real: two pabot runs at once and a plain robot run, each with its own artifacts.

Small loads (3 users) against the worktree's shared reference platform, which
the suites start themselves (suites/__init__.robot).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 240


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


# This test judges where artifacts land, not latency: five robot processes on two cores are slow by
# construction, so the latency and fairness thresholds are opened wide (the load suites' own runs judge them).
LOOSE_THRESHOLDS = [
    arg
    for name, value in (("STARTUP_P95", "60s"), ("STARTUP_P99", "60s"), ("COMPLETION_P95", "60s"),
                        ("STARTUP_FAIRNESS_FLOOR", "0"), ("ROUND_P95", "60s"), ("ROUND_SPREAD", "60s"),
                        ("FAIRNESS_FLOOR", "0"), ("THROUGHPUT_FLOOR", "0"), ("OPEN_P99", "60s"),
                        ("PLATFORM_CPU_LIMIT", "100%"))
    for arg in ("--variable", f"{name}:{value}")
]


def test_two_pabot_runs_at_once_and_a_robot_run_each_keep_their_artifacts(tmp_path):
    runs = {name: tmp_path / name for name in ("pabot-a", "pabot-b", "robot")}
    processes = {
        name: _start([sys.executable, str(ROOT / "run_crosstalk.py"), "--users", "3", "--processes", "2",
                      "--outputdir", str(runs[name]), "--report-file", str(runs[name] / "report.json"),
                      "--", *LOOSE_THRESHOLDS],
                     tmp_path / f"{name}.log")
        for name in ("pabot-a", "pabot-b")
    }
    # plain robot, no LOAD_RESULTS_DIR: the summaries follow ${OUTPUT DIR}
    processes["robot"] = _start([sys.executable, "-m", "robot", "--outputdir", str(runs["robot"]),
                                 "--variable", "STARTUP_USERS:3", *LOOSE_THRESHOLDS,
                                 "--suite", "concurrent agent startup", str(ROOT / "suites")],
                                tmp_path / "robot.log")
    codes = {name: process.wait(RUN_TIMEOUT) for name, process in processes.items()}
    logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in processes}
    for name, code in codes.items():
        assert code == 0, f"{name} exited {code}:\n{logs[name][-3000:]}"
        assert "Traceback" not in logs[name], f"{name}:\n{logs[name][-3000:]}"
        summaries = list((runs[name] / "load").glob("*.json"))
        assert summaries, f"{name}: no load summary under {runs[name] / 'load'}"
    for name in ("pabot-a", "pabot-b"):
        assert "--pabotlibport 0" in logs[name]
        assert f"Load summaries: {len(list((runs[name] / 'load').glob('*.json')))} in" in logs[name]
        report = (runs[name] / "report.json").read_text()
        assert '"passed": true' in report and '"load_runs": [' in report

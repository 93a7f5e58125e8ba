"""The runner only builds a robot/pabot command line: check the mapping of options to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import run_crosstalk


def _command(*argv: str) -> list[str]:
    args = run_crosstalk.build_parser().parse_args(list(argv))
    return run_crosstalk.build_command(args, Path("/tmp/out"), Path("/tmp/out/load"))


def _pairs(command: list[str], option: str) -> list[str]:
    return [command[i + 1] for i, part in enumerate(command) if part == option]


def test_default_is_the_full_profile_with_plain_robot():
    command = _command()
    assert command[1:3] == ["-m", "robot"]
    assert "STARTUP_USERS:100" in _pairs(command, "--variable")
    assert _pairs(command, "--exclude") == ["soak"]
    assert _pairs(command, "--suite") == ["concurrent agent startup", "sustained performance"]


def test_quick_users_and_tags():
    assert "STARTUP_USERS:20" in _pairs(_command("--quick"), "--variable")
    assert "STARTUP_USERS:200" in _pairs(_command("--quick", "--users", "200"), "--variable")
    assert _pairs(_command("--performance-only"), "--include") == ["performance"]
    assert _pairs(_command("--isolation-only"), "--include") == ["isolation"]


def test_timeout_verbose_soak_and_processes():
    command = _command("--timeout", "90", "--verbose", "--soak", "1000", "--processes", "2")
    assert "pabot.pabot" in command and "--pabotlibport" in command
    variables = _pairs(command, "--variable")
    assert "STARTUP_TIMEOUT:90s" in variables and "SOAK_USERS:1000" in variables
    assert _pairs(command, "--loglevel") == ["DEBUG"]
    assert "--exclude" not in command


def test_bad_options_fail_with_one_line():
    with pytest.raises(SystemExit, match="--users must be at least 1"):
        _command("--users", "0")
    with pytest.raises(SystemExit, match="does not exist"):
        _command("suites/no_such_suite.robot")


# ------------------------------------------------------------ what a command selects
def _selected(command: list[str]) -> set[str]:
    """The long names of the tests robot would run for ``command``'s --suite/--include/--exclude."""
    from robot.api import TestSuiteBuilder

    suite = TestSuiteBuilder().build(command[-1])
    suite.configure(include_suites=_pairs(command, "--suite") or None,
                    include_tags=_pairs(command, "--include") or None,
                    exclude_tags=_pairs(command, "--exclude") or None)
    return {test.full_name for test in suite.all_tests}


def _tagged(tag: str) -> set[str]:
    from robot.api import TestSuiteBuilder

    suite = TestSuiteBuilder().build(str(run_crosstalk.ROOT / "suites"))
    return {test.full_name for test in suite.all_tests if tag in test.tags and "soak" not in test.tags}


def test_isolation_only_selects_every_isolation_test_of_every_suite():
    command = _command("--isolation-only")
    assert "--suite" not in command and command[-1].endswith("suites")
    expected = _tagged("isolation")
    suites = {name.split(".")[1] for name in expected}
    # the isolation tests live in several suites, not only the two load suites
    assert {"Data Isolation", "Isolation Details", "Concurrent Agent Startup"} <= suites
    assert _selected(command) == expected


def test_performance_only_selects_every_performance_test():
    assert _selected(_command("--performance-only")) == _tagged("performance")


def test_default_selects_the_two_load_suites_only():
    names = _selected(_command())
    assert names and {name.split(".")[1] for name in names} == {
        "Concurrent Agent Startup", "Sustained Performance"}


def test_given_suites_narrow_a_tag_selection():
    command = _command("--isolation-only", "suites/data_isolation.robot")
    assert {name.split(".")[1] for name in _selected(command)} == {"Data Isolation"}


# ------------------------------------------------------------ artifacts and pabot
def test_load_summaries_go_under_the_output_directory():
    command = run_crosstalk.build_command(run_crosstalk.build_parser().parse_args([]), Path("/tmp/run-x"),
                                          Path("/tmp/run-x/load"))
    assert _pairs(command, "--outputdir") == ["/tmp/run-x"]
    assert "LOAD_RESULTS_DIR:/tmp/run-x/load" in _pairs(command, "--variable")


def test_pabot_runs_on_this_interpreter_with_pabotlib_on_a_free_port():
    command = _command("--processes", "3")
    assert command[:3] == [sys.executable, "-m", "pabot.pabot"]
    assert _pairs(command, "--pabotlibport") == ["0"]
    start = command.index("--command")
    assert command[start + 1:command.index("--end-command")] == [sys.executable, "-m", "robot"]


# ------------------------------------------------------------ environment first
def test_missing_robot_fails_with_one_line_before_anything_else(tmp_path):
    # -S: no site-packages, so neither robot nor pabot import - as on a machine without the venv
    result = subprocess.run([sys.executable, "-S", str(run_crosstalk.ROOT / "run_crosstalk.py"), "--quick",
                             "--outputdir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Cannot run: robot not importable") and "pip install" in lines[0]
    assert not (tmp_path / "out").exists()


def test_environment_problem_names_pabot_only_when_needed(monkeypatch):
    from crosstalk import runner

    real = runner.importlib.util.find_spec
    monkeypatch.setattr(runner.importlib.util, "find_spec",
                        lambda name: None if name == "pabot" else real(name))
    assert runner.environment_problem(1) is None
    assert "pabot not importable" in runner.environment_problem(2)


def test_the_report_never_pools_unlike_scenarios():
    import base64

    from crosstalk.metrics import new_histogram

    from run_crosstalk import by_scenario

    def encoded(ms: int) -> dict:
        h = new_histogram()
        h.record_value(ms * 1000)
        return {"completion": base64.b64encode(h.encode()).decode()}

    runs = [{"scenario": "agent startup", "verdict": "passed", "sent": 1, "completed": 1},
            {"scenario": "agent startup", "verdict": "passed", "sent": 1, "completed": 1},
            {"scenario": "open model", "verdict": "failed", "sent": 1, "completed": 1}]
    result = by_scenario(runs, [encoded(10), encoded(20), encoded(900)])
    assert set(result) == {"agent startup", "open model"}
    assert result["agent startup"]["runs"] == 2 and result["agent startup"]["verdict"] == "passed"
    assert result["agent startup"]["latency"]["completion"]["p99_ms"] < 25  # the open run is not in it
    assert result["open model"]["verdict"] == "failed"


def test_shards_merge_into_one_verdict(tmp_path):
    import json

    from run_crosstalk import main

    for shard, verdict in (("a", "passed"), ("b", "failed")):
        (tmp_path / shard).mkdir()
        (tmp_path / shard / "run.json").write_text(json.dumps(
            {"name": f"startup {shard}", "scenario": "agent startup", "verdict": verdict}))
    out = tmp_path / "merged.json"
    code = main(["--merge-summaries", str(tmp_path / "a"), str(tmp_path / "b"), "--report-file", str(out)])
    report = json.loads(out.read_text())
    assert code == 1 and report["passed"] is False
    assert report["scenarios"]["agent startup"]["runs"] == 2

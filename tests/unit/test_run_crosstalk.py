"""The runner only builds a robot/pabot command line: check the mapping of options to it."""

from __future__ import annotations

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
    assert "USERS:100" in _pairs(command, "--variable")
    assert _pairs(command, "--exclude") == ["soak"]
    assert _pairs(command, "--suite") == ["concurrent agent startup", "sustained performance"]


def test_quick_users_and_tags():
    assert "USERS:20" in _pairs(_command("--quick"), "--variable")
    assert "USERS:200" in _pairs(_command("--quick", "--users", "200"), "--variable")
    assert _pairs(_command("--performance-only"), "--include") == ["performance"]
    assert _pairs(_command("--isolation-only"), "--include") == ["isolation"]


def test_timeout_verbose_soak_and_processes():
    command = _command("--timeout", "90", "--verbose", "--soak", "1000", "--processes", "2")
    assert command[0].endswith("pabot") and "--pabotlibport" in command
    variables = _pairs(command, "--variable")
    assert "STARTUP_TIMEOUT:90s" in variables and "SOAK_USERS:1000" in variables
    assert _pairs(command, "--loglevel") == ["DEBUG"]
    assert "--exclude" not in command


def test_bad_options_fail_with_one_line():
    with pytest.raises(SystemExit, match="--users must be at least 1"):
        _command("--users", "0")
    with pytest.raises(SystemExit, match="does not exist"):
        _command("suites/no_such_suite.robot")


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

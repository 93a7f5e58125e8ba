"""The distribution, the crosstalk command, the starter project and the CI files.

Workflow files (this repository's and the one ``crosstalk init`` writes) are validated
against the GitHub workflow JSON schema with check-jsonschema, so a broken one cannot land.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from crosstalk import __version__, cli, jobsummary, runner, starter
from crosstalk.metrics import new_histogram, record_seconds

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def check_workflows(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
         *map(str, files)], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------- distribution
def test_every_keyword_library_and_folder_is_in_the_distribution():
    setuptools = PYPROJECT["tool"]["setuptools"]
    libraries = sorted(p.stem for p in (ROOT / "libraries").glob("Crosstalk*.py"))
    assert sorted(setuptools["py-modules"]) == libraries, "list every library in py-modules of pyproject.toml"
    mapped = setuptools["package-dir"]
    assert mapped["crosstalk.resources"] == "resources" and mapped["crosstalk.suites"] == "suites"
    assert mapped["reference_platform"] == "reference_platform" and mapped[""] == "libraries"
    classifiers = PYPROJECT["project"]["classifiers"]
    assert {"Framework :: Robot Framework", "Framework :: Robot Framework :: Library"} <= set(classifiers)
    assert PYPROJECT["project"]["scripts"]["crosstalk"] == "crosstalk.cli:main"


def test_dependency_files_hold_only_requirements():
    """setuptools reads requirements.txt and requirements-platform.txt: no pip options in them."""
    from packaging.requirements import Requirement

    for name in ("requirements.txt", "requirements-platform.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                Requirement(line)  # raises on "-r ...", "-e ...", "--config-settings ..."


def test_suites_and_resources_import_the_installed_package():
    """No relative ../libraries or ../resources imports: the suites import like a user's do."""
    for path in [*ROOT.glob("resources/*.resource"), *ROOT.glob("suites/*.robot")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith(("Library", "Resource", "Variables")):
                assert "../" not in line, f"{path.relative_to(ROOT)}:{number}: {line}"


# ---------------------------------------------------------------------- CI files
def test_this_repositorys_workflows_validate_against_the_schema():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    result = check_workflows(*workflows)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / ".github" / "workflows" / "crosstalk.yml").read_text()
    for needed in ("bash .ci/run", "--shard ${{ matrix.shard }}/", "--pabotlibport 0", "rebot --merge",
                   "crosstalk merge", "crosstalk summary", "GITHUB_STEP_SUMMARY", "upload-artifact"):
        assert needed in text, needed
    jenkins = (ROOT / "Jenkinsfile").read_text()
    for needed in ("bash .ci/run", "parallel", "--shard 3/", "rebot --merge", "--xunit", "junit ",
                   "robot outputPath", "crosstalk merge", "crosstalk summary"):
        assert needed in jenkins, needed


def test_init_writes_a_project_whose_workflow_validates(tmp_path):
    lines: list[str] = []
    written = starter.write_project(tmp_path / "team-tests", out=lines.append)
    project = tmp_path / "team-tests"
    assert {p.relative_to(project).as_posix() for p in written} == {
        "profile.py", "tests/chat_isolation.robot", "requirements.txt", ".github/workflows/crosstalk.yml",
        "Jenkinsfile", "README.md", ".gitignore"}
    assert f"robotframework-crosstalk[platform]=={__version__}" in (project / "requirements.txt").read_text()
    suite = (project / "tests" / "chat_isolation.robot").read_text()
    assert "Resource            crosstalk/resources/isolation.resource" in suite
    result = check_workflows(project / ".github" / "workflows" / "crosstalk.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    jenkins = (project / "Jenkinsfile").read_text()
    for needed in ("parallel", "--shard 1/", "--shard 2/", "rebot --merge", "--xunit", "junit ",
                   "robot outputPath", "crosstalk summary"):
        assert needed in jenkins, needed
    assert "@" + "VERSION@" not in "".join(p.read_text() for p in written)


def test_init_keeps_existing_files_unless_forced(tmp_path):
    starter.write_project(tmp_path, out=lambda _: None)
    with pytest.raises(SystemExit, match=r"already has profile.py, .*pass --force"):
        starter.write_project(tmp_path, out=lambda _: None)
    starter.write_project(tmp_path, force=True, out=lambda _: None)


def test_profile_sets_only_what_the_environment_gives(tmp_path, monkeypatch):
    starter.write_project(tmp_path, out=lambda _: None)
    namespace: dict = {}
    exec((tmp_path / "profile.py").read_text(), namespace)
    monkeypatch.delenv("CROSSTALK_AUTH_URL", raising=False)
    monkeypatch.setenv("CROSSTALK_BACKEND_URL", "https://chat.example.test")
    assert namespace["get_variables"]() == {"BACKEND_URL": "https://chat.example.test"}


# ---------------------------------------------------------------------- command line
@pytest.mark.parametrize("command", ["run", "platform", "init", "summary", "merge", "cleanup"])
def test_every_subcommand_has_help(command):
    result = subprocess.run([sys.executable, "-m", "crosstalk.cli", command, "--help"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=_env())
    if command == "cleanup" and result.returncode == 2:
        # without the cleanup module: one line saying so
        assert result.stderr.count("\n") == 1 and "not available" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_usage_errors_are_one_line():
    for argv in (["merge"], ["bogus"], ["summary"], ["run", "--users", "x"], ["init"], ["cleanup"]):
        result = subprocess.run([sys.executable, "-m", "crosstalk.cli", *argv], capture_output=True,
                                text=True, timeout=60, cwd=ROOT, env=_env())
        assert result.returncode == 2, argv
        assert result.stderr.count("\n") == 1 and "error:" in result.stderr, result.stderr
    with pytest.raises(SystemExit, match=r"does not exist: give robot's output\.xml"):
        cli.main(["summary", "no/such/output.xml"])


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT / "libraries")}


# ---------------------------------------------------------------------- summary and merge
def _load_summary(scenario: str, seconds: list[float], verdict: str, thresholds: list[dict]) -> dict:
    histogram = new_histogram()
    for value in seconds:
        record_seconds(histogram, value)
    return {
        "name": scenario, "scenario": scenario, "users": len(seconds), "sent": len(seconds),
        "completed": len(seconds), "duration_s": 2.0, "throughput_per_s": len(seconds) / 2,
        "fairness": 0.98, "violations": {}, "verdict": verdict, "thresholds": thresholds,
        "latency": {"completion": {"count": len(seconds)}},
        "histograms_encoded": {"completion": base64.b64encode(histogram.encode()).decode()},
        "per_user": [{"label": "u"}],
    }


def _shards(tmp_path: Path, second_verdict: str = "passed") -> list[Path]:
    threshold = [{"expression": "p95 < 5s", "measured": "1.2 s", "passed": True}]
    dirs = []
    for index, (values, verdict) in enumerate([([0.1] * 90 + [1.0] * 10, "passed"),
                                               ([0.2] * 90 + [3.0] * 10, second_verdict)], 1):
        directory = tmp_path / f"shard-{index}" / "load"
        directory.mkdir(parents=True)
        summary = _load_summary("startup", values, verdict, threshold)
        (directory / "startup.json").write_text(json.dumps(summary))
        dirs.append(directory)
    return dirs


def test_merge_pools_histograms_of_shards_into_one_verdict_and_charts(tmp_path, capsys):
    dirs = _shards(tmp_path)
    report_file = tmp_path / "merged.json"
    assert runner.merge_summaries(dirs, report_file) == 0
    report = json.loads(report_file.read_text())
    startup = report["scenarios"]["startup"]
    assert startup["runs"] == 2 and startup["users"] == 200 and startup["verdict"] == "passed"
    # 200 samples: 180 at or below 0.2 s, 20 slow ones at 1 s and 3 s -> p95 lies in the slow tail
    assert 900 <= startup["latency"]["completion"]["p95_ms"] <= 3100
    assert (tmp_path / "charts" / "startup-latency.svg").read_text().startswith("<?xml")
    assert "2 load runs, 1 scenarios, passed" in capsys.readouterr().out


def test_merge_fails_when_one_shard_failed(tmp_path):
    assert runner.merge_summaries(_shards(tmp_path, "failed"), tmp_path / "merged.json") == 1
    with pytest.raises(SystemExit, match="is not a directory of load summaries"):
        runner.merge_summaries([tmp_path / "missing"], tmp_path / "merged.json")


SUITE = """\
*** Settings ***
Library    {library}

*** Test Cases ***
Isolated
    Log Isolation Table
Broken
    Fail    Alice saw Bob's canary ct-42 in thread t-1\\nsecond line
Skipped
    Skip    No BACKEND_DATABASE_URL: the row checks need the backend database
"""

LIBRARY = """\
from robot.api import logger
from crosstalk import htmllog

def log_isolation_table():
    logger.info(htmllog.table(("rule", "users", "items checked", "violations"),
                [["canaries do not leak", 4, 40, 0], ["REST lists only own threads", 4, 4, 1]],
                "Isolation rules"), html=True)
"""


def test_summary_of_a_run(tmp_path):
    import robot

    (tmp_path / "IsoLib.py").write_text(LIBRARY)
    (tmp_path / "demo.robot").write_text(SUITE.format(library=tmp_path / "IsoLib.py"))
    out = tmp_path / "results"
    robot.run(str(tmp_path / "demo.robot"), outputdir=str(out), output="output.xml", log="log.html",
              report="NONE", stdout=subprocess.DEVNULL, console="none", pythonpath=[str(ROOT / "libraries")])
    _shards(out)  # out/shard-1/load, out/shard-2/load: downloaded shards next to the merged output
    text = jobsummary.render(out / "output.xml", jobsummary.default_load_dirs(out / "output.xml"),
                             "https://ci.example.test/run/1/log.html")
    assert "## ❌ Crosstalk: 1 passed, 1 failed, 1 skipped" in text
    assert "| ❌ Demo | 1 | 1 | 1 |" in text
    assert "| Demo › Isolated | 4 | 2 | 44 | ❌ REST lists only own threads: 1 |" in text
    assert "[Demo.Broken](https://ci.example.test/run/1/log.html#s1-t2): Alice saw Bob's canary ct-42" in text
    assert "second line" not in text
    assert "1 × No BACKEND_DATABASE_URL: the row checks need the backend database" in text
    assert "| startup | 2 | 200 |" in text and "✅ `p95 < 5s` (measured 1.2 s)" in text
    assert "[report.html](https://ci.example.test/run/1/report.html)" in text

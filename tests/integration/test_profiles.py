"""Variable files (profiles) never collide with the suites' own variables.

A variable file overrides every variable of the same name (case, spaces and
underscores aside) in every suite and resource.  ``USERS = 100`` in the load
profile once replaced the security suite's ``&{USERS}`` dictionary and failed its
setup; ``--dryrun`` cannot see that, because the clash shows when the setup runs.

Two checks, for every file in ``resources/env/``:

- statically, each of its names belongs to at most one suite or resource, is a
  plain scalar there, is never set at run time by a suite (``VAR … scope=``,
  ``Set Suite Variable`` …), and is read somewhere (a misspelt or stale name
  would silently do nothing);
- for real, robot runs the whole suite set with the file, each suite's tests
  replaced by one no-op (``profile_probe.SuiteSetupsOnly``), so every suite setup
  and teardown runs with the profile against a real platform, and all must pass.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from robot.api import ExecutionResult, ResultVisitor
from robot.api.parsing import Variable, get_init_model, get_model, get_resource_model
from robot.variables.filesetter import PythonImporter

from tests.conftest import REPO_ROOT
from tests.integration.profile_probe import PROBE_TEST

PROFILES = sorted((REPO_ROOT / "resources" / "env").glob("*.py"))
ROBOT_FILES = sorted([*(REPO_ROOT / "suites").rglob("*.robot"),
                      *(REPO_ROOT / "resources").rglob("*.resource")])
TARGET = {"AUTH_URL": "auth_url", "BACKEND_URL": "backend_url", "WS_URL": "ws_url",
          "AUTH_DATABASE_URL": "auth_database_url", "BACKEND_DATABASE_URL": "backend_database_url",
          "REDIS_URL": "redis_url"}
ROBOT_TIMEOUT = 240.0
PROBE_MODIFIER = "tests.integration.profile_probe.SuiteSetupsOnly"
# The agent-startup suite makes its load run in its first test (not probed here); its own variable
# (a command-line value beats the variable file) keeps it small; every name still meets every suite.
CHEAP = ("--variable", "STARTUP_USERS:2")
DYNAMIC = re.compile(
    r"^\s+(?:VAR\s{2,}[$@&]\{(?P<var>[^}]+)\}.*scope=\s*(?:SUITE|SUITES|GLOBAL|TEST|TASK)"
    r"|Set (?:Suite|Global|Test|Task) Variable\s{2,}\\?[$@&]\{(?P<set>[^}]+)\})",
    re.IGNORECASE | re.MULTILINE)


def normalize(name: str) -> str:
    """Robot's variable matching: case, spaces and underscores do not count."""
    return re.sub(r"[\s_]", "", name.strip("${}@&%")).lower()


def profile_variables(path: Path) -> dict[str, object]:
    """The file's variables as robot loads them, without the modules and functions it imports."""
    return {name.strip("${}@&"): value for name, value in PythonImporter().import_variables(str(path))
            if not (inspect.ismodule(value) or inspect.isroutine(value) or inspect.isclass(value))}


def declarations() -> dict[str, list[tuple[str, str, tuple]]]:
    """normalized name -> [(file, '${NAME}', default)] from every *** Variables *** section."""
    found: dict[str, list] = {}
    for path in ROBOT_FILES:
        model = get_resource_model(path) if path.suffix == ".resource" else \
            get_init_model(path) if path.name == "__init__.robot" else get_model(path)
        for section in model.sections:
            for statement in getattr(section, "body", []):
                if isinstance(statement, Variable) and statement.name:
                    found.setdefault(normalize(statement.name), []).append(
                        (path.relative_to(REPO_ROOT).as_posix(), statement.name, tuple(statement.value)))
    return found


def set_at_run_time() -> dict[str, list[str]]:
    """normalized name -> files that set it at suite, global or test scope while running."""
    found: dict[str, list[str]] = {}
    for path in ROBOT_FILES:
        for match in DYNAMIC.finditer(path.read_text()):
            name = match.group("var") or match.group("set")
            found.setdefault(normalize(name), []).append(path.relative_to(REPO_ROOT).as_posix())
    return found


def read_by_libraries() -> set[str]:
    names: set[str] = set()
    for path in (REPO_ROOT / "libraries").rglob("*.py"):
        names |= {normalize(n) for n in re.findall(r"[\"'{]([A-Z][A-Z0-9_]{2,})[\"'}]", path.read_text())}
    return names


def collisions(profile: Path) -> list[str]:
    """Why the names of ``profile`` could clash with the suites (empty when they cannot)."""
    declared, dynamic, read = declarations(), set_at_run_time(), read_by_libraries()
    problems = []
    for name in profile_variables(profile):
        key = normalize(name)
        owners = declared.get(key, [])
        if len({default for *_, default in owners}) > 1:
            problems.append(f"{name} is a variable of {len(owners)} files with different defaults: "
                            f"{', '.join(f'{file} {decl}' for file, decl, _ in owners)}")
        problems += [f"{name} collides with {decl} of {file} (not a scalar)"
                     for file, decl, _ in owners if not decl.startswith("$")]
        if key in dynamic:
            problems.append(f"{name} is set at run time by {', '.join(sorted(set(dynamic[key])))}")
        if not owners and key not in read:
            problems.append(f"{name} is used by no suite, resource or library: misspelt or stale")
    return problems


@pytest.mark.parametrize("profile", PROFILES, ids=lambda path: path.name)
def test_every_profile_name_belongs_to_one_suite(profile):
    problems = collisions(profile)
    assert not problems, (f"{profile.relative_to(REPO_ROOT)}: " + "; ".join(problems) +
                          ". Give the suite variable (and the profile's) a name only that suite uses.")


def test_the_static_check_sees_a_collision_and_a_stale_name(tmp_path):
    old = tmp_path / "old_profile.py"
    old.write_text("USERS = 100\nROUNDS_TYPO = 5\nSTARTUP_USERS = 3\n")
    problems = collisions(old)
    assert any(p.startswith("USERS collides with &{USERS}") for p in problems), problems
    assert any(p.startswith("ROUNDS_TYPO is used by no suite") for p in problems), problems
    assert not any(p.startswith("STARTUP_USERS") for p in problems), problems


def _first(message: str) -> str:
    lines = [line for line in message.splitlines() if line.strip() and not line.endswith("failed:")]
    return lines[0] if lines else message


class _Failures(ResultVisitor):
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.probes = 0

    def visit_suite(self, suite) -> None:  # type: ignore[no-untyped-def]
        for fixture in (suite.setup, suite.teardown):
            if fixture and fixture.status == "FAIL":
                message = fixture.message or suite.message or "failed"
                self.problems.append(f"{suite.full_name} {fixture.type.lower()}: {_first(message)}")
        super().visit_suite(suite)

    def visit_test(self, test) -> None:  # type: ignore[no-untyped-def]
        if test.name == PROBE_TEST:
            self.probes += 1
        if test.status != "PASS":
            self.problems.append(f"{test.full_name}: {_first(test.message)}")


def run_suite_setups(profile: Path, platform, outdir: Path, *extra: str) -> tuple[list[str], int]:
    outdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "REFPLAT_FAULTS"}
    for name, key in TARGET.items():  # the target, as local.py (plain) and external.py (CROSSTALK_*) read it
        env[name] = env["CROSSTALK_" + name] = str(platform.state.get(key) or "")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "robot", "--prerunmodifier", PROBE_MODIFIER,
               "--variablefile", str(profile), "--outputdir", str(outdir), "--log", "log.html",
               "--report", "NONE", "--console", "quiet", *CHEAP, *extra, str(REPO_ROOT / "suites")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=ROBOT_TIMEOUT)
    output = outdir / "output.xml"
    if not output.exists():
        return [f"robot wrote no output.xml (exit {result.returncode}): {result.stderr[-500:]}"], 0
    visitor = _Failures()
    ExecutionResult(str(output)).visit(visitor)
    return visitor.problems, visitor.probes


def test_every_profile_passes_every_suite_setup(platform, tmp_path):
    suites = len(list((REPO_ROOT / "suites").glob("*.robot"))) - 1  # without __init__.robot
    clashing = tmp_path / "clashing_profile.py"  # the profile that once broke the security suite
    clashing.write_text("USERS = 100\n")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(PROFILES) + 1) as pool:
        runs = {profile.name: pool.submit(run_suite_setups, profile, platform, tmp_path / profile.stem)
                for profile in PROFILES}
        proof = pool.submit(run_suite_setups, clashing, platform, tmp_path / "clash", "--suite", "Security")
        outcomes = {name: future.result() for name, future in runs.items()}
        clash_problems, _ = proof.result()
    report = []
    for name, (problems, probes) in outcomes.items():
        if probes != suites:
            problems = [*problems, f"{probes} of {suites} suites ran"]
        report += [f"{name}: {problem}" for problem in problems]
    assert not report, "a profile breaks suites (log under " + str(tmp_path) + "):\n" + "\n".join(report)
    assert any("Security setup" in problem for problem in clash_problems), (
        f"the probe did not see USERS = 100 break the security suite's setup: {clash_problems}")

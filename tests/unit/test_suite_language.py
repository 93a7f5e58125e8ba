"""Suites and resources speak business language: no Gherkin prefixes, no unused resource keywords.

Both checks read the files with Robot Framework's own parser (``robot.api.get_model``), so a
keyword call is a keyword call whatever its spacing, and a keyword is used when any suite,
resource, acceptance test or documentation example calls it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from robot.api import get_model, get_resource_model
from robot.api.parsing import ModelVisitor
from robot.running.builder import ResourceFileBuilder

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "suites").glob("*.robot"))
RESOURCES = sorted((ROOT / "resources").glob("*.resource"))
ATESTS = sorted((ROOT / "tests" / "atest").glob("*.robot"))
# where a keyword may be used besides the files above: every other .robot file (the starter template,
# tests' own suites) and the documentation's examples
ROBOT_ELSEWHERE = sorted(p for p in ROOT.rglob("*.robot") if not {"results", ".git", ".tox"} & set(p.parts))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "libraries" / "crosstalk" / "templates").iterdir())]
GHERKIN = re.compile(r"^(given|when|then|and|but)\s", re.IGNORECASE)


class _Calls(ModelVisitor):
    """Every keyword name a file calls: keyword calls, setups/teardowns and templates."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.arguments: list[tuple[int, str]] = []

    def visit_KeywordCall(self, node) -> None:
        self.calls.append((node.lineno, node.keyword))
        # a keyword run by another (Run Keyword And Expect Error, Wait Until Keyword Succeeds, ...)
        self.arguments.extend((node.lineno, arg) for arg in node.args)

    def _fixture(self, node) -> None:
        if node.name and node.name.upper() != "NONE":
            self.calls.append((node.lineno, node.name))

    visit_Setup = visit_Teardown = visit_SuiteSetup = visit_SuiteTeardown = _fixture
    visit_TestSetup = visit_TestTeardown = _fixture

    def _template(self, node) -> None:
        if node.value and node.value.upper() != "NONE":
            self.calls.append((node.lineno, node.value))

    visit_Template = visit_TestTemplate = _template


def _visit(path: Path) -> _Calls:
    model = get_resource_model(path) if path.suffix == ".resource" else get_model(path)
    visitor = _Calls()
    visitor.visit(model)
    return visitor


def calls_in(path: Path) -> list[tuple[int, str]]:
    return _visit(path).calls


def unused_resource_keywords() -> list[str]:
    """Resource keywords no suite, resource, test or documentation example calls."""
    names: set[str] = set()
    for path in {*SUITES, *RESOURCES, *ATESTS, *ROBOT_ELSEWHERE}:
        visitor = _visit(path)
        for _, name in (*visitor.calls, *visitor.arguments):
            names.add(GHERKIN.sub("", name).strip().lower())
    docs = "\n".join(p.read_text(errors="replace") for p in DOCS if p.is_file()).lower()
    unused = []
    for path in RESOURCES:
        for keyword in ResourceFileBuilder().build(str(path)).keywords:
            if not any(keyword.matches(name) for name in names) and keyword.name.lower() not in docs:
                unused.append(f"{path.name}: {keyword.name}")
    return unused


def _gherkin(paths) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}: {name}"
            for path in paths for line, name in calls_in(path) if GHERKIN.match(name)]


def test_no_suite_or_resource_uses_a_gherkin_prefix():
    found = _gherkin((*SUITES, *RESOURCES, *ATESTS))
    assert not found, ("Gherkin prefixes are not used in this project (team decision): write the step as a "
                       "business sentence instead:\n" + "\n".join(found))


def test_the_gherkin_check_sees_prefixed_calls(tmp_path):
    suite = tmp_path / "gherkin.robot"
    suite.write_text("*** Test Cases ***\nT\n    Given Both Budgets Hold 10 Tokens\n"
                     "    ${run}=    When Two Agents Race\n    [Teardown]    And Clean Up\n")
    assert [name for _, name in calls_in(suite) if GHERKIN.match(name)] == [
        "Given Both Budgets Hold 10 Tokens", "When Two Agents Race", "And Clean Up"]


def test_every_resource_keyword_is_used():
    unused = unused_resource_keywords()
    assert not unused, ("Resource keywords nobody calls (no suite, resource, test or docs example): delete "
                        "them, or use them:\n" + "\n".join(unused))


@pytest.mark.parametrize("folder", ["suites", "tests/atest"])
def test_every_keyword_call_resolves(folder, tmp_path):
    """Robot's dry run: every keyword a suite calls exists and gets arguments it accepts (a deleted
    resource keyword that another branch still calls fails here, not in a full run)."""
    run = subprocess.run([sys.executable, "-m", "robot", "--dryrun", "--output", "NONE", "--report", "NONE",
                          "--log", "NONE", "--console", "dotted", "--pythonpath", str(ROOT / "libraries"),
                          str(ROOT / folder)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]

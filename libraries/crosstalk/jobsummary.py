"""``crosstalk summary``: a run as Markdown for the CI page (``$GITHUB_STEP_SUMMARY``).

Read from robot's ``output.xml`` (``robot.api.ExecutionResult``; a pabot or ``rebot --merge``
output too) and from the load summaries the run wrote (``load/*.json`` next to it):

- the totals and, per suite, passed / failed / skipped;
- the isolation verdicts: every "Isolation rules" table CrosstalkIsolation logged (rule,
  users, items checked, violations), per test;
- the SLA table: per load scenario, P95/P99 completion, throughput, fairness, every
  threshold with its measured value, the verdict (shards merged by their HDR histograms);
- the first line of every failure, with a link into log.html;
- why tests were skipped, one line per reason.

Example:
    crosstalk summary results/output.xml >> "$GITHUB_STEP_SUMMARY"
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

ISOLATION_CAPTION = "Isolation rules"


@dataclass
class IsolationVerdict:
    test: str
    rows: list[list[str]] = field(default_factory=list)  # rule, users, items checked, violations


class _Tables(HTMLParser):
    """The captions and cell texts of the HTML tables in one log message."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append(("", []))
        elif tag == "caption":
            self._caption = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption" and self._caption is not None and self.tables:
            self.tables[-1] = ("".join(self._caption).strip(), self.tables[-1][1])
            self._caption = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            self.tables[-1][1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._caption is not None:
            self._caption.append(data)


def html_tables(message: str) -> list[tuple[str, list[list[str]]]]:
    parser = _Tables()
    parser.feed(message)
    return parser.tables


def isolation_verdicts(result: Any) -> list[IsolationVerdict]:
    """Every "Isolation rules" table logged under each test, in run order."""
    from robot.api import ResultVisitor

    found: list[IsolationVerdict] = []

    class Visitor(ResultVisitor):
        test = ""

        def start_test(self, test: Any) -> None:
            self.test = f"{test.parent.name} › {test.name}"

        def visit_message(self, message: Any) -> None:
            if message.html and ISOLATION_CAPTION in message.message:
                for caption, rows in html_tables(message.message):
                    if caption == ISOLATION_CAPTION:
                        found.append(IsolationVerdict(self.test, [r for r in rows[1:] if len(r) == 4]))

    result.visit(Visitor())
    return found


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _first_line(message: str) -> str:
    lines = [line for line in (message or "").splitlines() if line.strip()]
    text = lines[0].strip() if lines else "(no message)"
    return text if len(text) <= 300 else text[:297] + "..."


def _suites(suite: Any) -> Iterable[Any]:
    """Suites that hold tests directly (the files), depth first."""
    if suite.tests:
        yield suite
    for child in suite.suites:
        yield from _suites(child)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def sla_lines(scenarios: dict) -> list[str]:
    if not scenarios:
        return []
    out = ["### SLA (load runs)", "",
           "| scenario | runs | users | P95 completion | P99 completion | throughput | fairness "
           "| thresholds | verdict |",
           "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, s in scenarios.items():
        completion = s["latency"].get("completion", {})
        fairness = "–" if s.get("fairness_min") is None else f"{s['fairness_min']:.3f}"
        thresholds = "<br>".join(
            f"{'✅' if t.get('passed') else '❌'} `{_cell(t.get('expression'))}` "
            f"(measured {_cell(t.get('measured'))})"
            for t in s.get("thresholds", [])) or "none checked"
        verdict = {"passed": "✅ passed", "failed": "❌ failed"}.get(s["verdict"], s["verdict"])
        out.append(f"| {_cell(name)} | {s['runs']} | {s['users']} | {_ms(completion.get('p95_ms'))} "
                   f"| {_ms(completion.get('p99_ms'))} | {s['throughput_per_s']:,.1f}/s | {fairness} "
                   f"| {thresholds} | {verdict} |")
    out.append("")
    return out


def _int(text: str) -> int:
    try:
        return int(text.replace(",", ""))
    except ValueError:
        return 0


def isolation_lines(verdicts: list[IsolationVerdict]) -> list[str]:
    """One row per test: users, rules checked, items checked, violations (naming the broken rules)."""
    per_test: dict[str, dict] = {}
    for verdict in verdicts:
        entry = per_test.setdefault(verdict.test, {"users": 0, "rules": set(), "items": 0, "broken": {}})
        for rule, users, checked, violations in verdict.rows:
            entry["users"] = max(entry["users"], _int(users))
            entry["rules"].add(rule)
            entry["items"] += _int(checked)
            if _int(violations):
                entry["broken"][rule] = entry["broken"].get(rule, 0) + _int(violations)
    if not per_test:
        return []
    out = ["### Isolation", "", "| test | users | rules | items checked | violations |",
           "|---|---:|---:|---:|---|"]
    for test, entry in per_test.items():
        broken = entry["broken"]
        shown = ("❌ " + ", ".join(f"{rule}: {n}" for rule, n in broken.items())) if broken else "0"
        out.append(f"| {_cell(test)} | {entry['users']} | {len(entry['rules'])} | {entry['items']:,} "
                   f"| {_cell(shown)} |")
    out.append("")
    return out


def render(output: Path, load_dirs: list[Path], log_url: str | None = None) -> str:
    from robot.api import ExecutionResult

    from .runner import by_scenario, read_summaries

    result = ExecutionResult(str(output))
    top = result.suite
    stats = top.statistics
    log = log_url or "log.html"
    icon = "❌" if stats.failed else "✅"
    report = log.rsplit("log.html", 1)[0] + "report.html" if log.endswith("log.html") else log
    elapsed = top.elapsed_time.total_seconds()
    lines = [f"## {icon} Crosstalk: {stats.passed} passed, {stats.failed} failed, {stats.skipped} skipped",
             "", f"[log.html]({log}) · [report.html]({report}) · {elapsed:.0f} s", "",
             "| suite | passed | failed | skipped |", "|---|---:|---:|---:|"]
    for suite in _suites(top):
        s = suite.statistics
        mark = "❌ " if s.failed else ""
        lines.append(f"| {mark}{_cell(suite.full_name)} "
                     f"| {s.passed} | {s.failed} | {s.skipped} |")
    lines.append("")

    lines += isolation_lines(isolation_verdicts(result))

    dirs = [d for d in load_dirs if d.is_dir()]
    if dirs:
        runs, encoded = read_summaries(dirs)
        lines += sla_lines(by_scenario(runs, encoded))

    failed = [t for t in top.all_tests if t.status == "FAIL"]
    if failed or (top.status == "FAIL" and top.message):
        lines += ["### Failures", ""]
        if top.message and top.status == "FAIL" and not failed:
            lines.append(f"- **{_cell(top.name)}**: {_cell(_first_line(top.message))}")
        for test in failed:
            name = test.full_name
            lines.append(f"- [{_cell(name)}]({log}#{test.id}): {_cell(_first_line(test.message))}")
        lines.append("")

    reasons: dict[str, int] = {}
    for test in top.all_tests:
        if test.status == "SKIP":
            reason = _first_line(test.message or "no reason given").removeprefix(
                "Skipped in parent suite setup: ")
            reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        lines += ["### Skipped", ""]
        lines += [f"- {n} × {_cell(reason)}" for reason, n in sorted(reasons.items(), key=lambda i: -i[1])]
        lines.append("")
    return "\n".join(lines)


def default_load_dirs(output: Path) -> list[Path]:
    """``load/`` next to output.xml, ``*/load`` (downloaded shards) and ``pabot_results/*/load``."""
    base = output.resolve().parent
    found = [p for pattern in ("*/load", "pabot_results/*/load", "*/pabot_results/*/load")
             for p in base.glob(pattern) if p.is_dir()]
    return [base / "load", *sorted(set(found))]


def build_parser(prog: str = "crosstalk summary") -> argparse.ArgumentParser:
    from .cli import OneLineParser

    parser = OneLineParser(
        prog=prog, description="Print a run as Markdown (per suite passed/failed/skipped, isolation "
        "verdicts, SLA table, first line of every failure, links to log.html), e.g. into "
        "$GITHUB_STEP_SUMMARY.")
    parser.add_argument("output", type=Path, help="robot's output.xml (also a pabot or rebot --merge output)")
    parser.add_argument("--load", type=Path, action="extend", nargs="+", default=None, metavar="DIR",
                        help="a directory of load summaries (repeatable; default: load/ next to output.xml "
                        "and */load below it)")
    parser.add_argument("--log-url", default=None,
                        help="where log.html is published (default: log.html next to the summary)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.output.is_file():
        raise SystemExit(f"{args.output} does not exist: give robot's output.xml (e.g. results/output.xml).")
    try:
        text = render(args.output, args.load or default_load_dirs(args.output), args.log_url)
    except Exception as error:  # robot's DataError for a file that is not an output.xml
        if type(error).__name__ != "DataError":
            raise
        raise SystemExit(f"{args.output} is not a robot output.xml: {_first_line(str(error))}") from None
    print(text)
    return 0

"""``crosstalk run`` and ``crosstalk merge``: the load suites through robot / pabot, and shard merging.

``run`` only turns options into a robot (or pabot) command line - tags, variables,
output directory - prints that command and runs it.  Everything else (the platform,
the load, the thresholds) lives in the suites.  ``merge`` joins the load summaries of
several shards or machines (their HDR histograms, losslessly) into one verdict per
scenario and a chart per scenario.

Example:
    crosstalk run --quick
    crosstalk merge shard-1/load shard-2/load --report-file results/merged.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .paths import results_root, source_checkout

LOAD_SUITES = ("suites/concurrent_agent_startup.robot", "suites/sustained_performance.robot")
FULL_USERS = 100
QUICK_USERS = 20
LATENCY_KEYS = ("connect", "first_event", "completion", "gap")
CHART_PERCENTILES = (50, 75, 90, 95, 99, 99.9)


def suites_dir() -> Path:
    """The suites ``crosstalk run`` runs: the checkout's ``suites/``, or the installed ones."""
    checkout = source_checkout()
    return checkout / "suites" if checkout else Path(__file__).resolve().parent / "suites"


def add_run_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--users", type=int, default=None,
                        help=f"users for agent startup (default {FULL_USERS}; --quick: {QUICK_USERS})")
    parser.add_argument("--quick", action="store_true", help=f"quick profile: {QUICK_USERS} users")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--performance-only", action="store_true",
                       help="every test tagged 'performance', in every suite unless suites are given")
    group.add_argument("--isolation-only", action="store_true",
                       help="every test tagged 'isolation', in every suite unless suites are given")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="wait at most this long for each agent run, and stop the whole run after "
                        "ten times as long (default: the suites' own timeouts)")
    parser.add_argument("--report-file", type=Path, default=None,
                        help="write one JSON report here: outcome and every load run's summary")
    parser.add_argument("--verbose", action="store_true", help="DEBUG log level and verbose console")
    parser.add_argument("--processes", type=int, default=1,
                        help="run the suites in parallel with pabot (default 1: plain robot)")
    parser.add_argument("--soak", type=int, default=0, metavar="USERS",
                        help="also run the soak test holding this many users from one process (e.g. 1000)")
    parser.add_argument("--outputdir", type=Path, default=None,
                        help="robot output directory (default results/run-<time>)")
    parser.add_argument("--merge-summaries", type=Path, nargs="+", default=None, metavar="DIR",
                        help="merge the load summaries of several shards (their results/.../load dirs) into "
                        "--report-file and run nothing (the same as 'crosstalk merge')")
    parser.add_argument("suites", nargs="*",
                        help=f"suite files (default: {' '.join(LOAD_SUITES)}; with --isolation-only or "
                        "--performance-only: every suite). Arguments after -- go to robot/pabot.")
    return parser


def build_parser(prog: str = "crosstalk run") -> argparse.ArgumentParser:
    return add_run_options(argparse.ArgumentParser(
        prog=prog,
        description="Run the Crosstalk load suites (concurrent agent startup, sustained performance) "
        "with robot, or pabot with --processes. Extra arguments after -- go to robot/pabot.",
    ))


def _suite_name(suite: str) -> str:
    """The robot --suite name of a suite file given as a path or a bare name."""
    folder = suites_dir()
    candidates = [Path(suite), folder / suite, folder / Path(suite).name, folder / f"{suite}.robot"]
    if not any(path.is_file() for path in candidates):
        raise SystemExit(f"Suite file '{suite}' does not exist: give a path like {LOAD_SUITES[0]}.")
    return Path(suite).stem.replace("_", " ")


def build_command(args: argparse.Namespace, outputdir: Path, summaries: Path) -> list[str]:
    users = args.users if args.users is not None else (QUICK_USERS if args.quick else FULL_USERS)
    if users < 1:
        raise SystemExit(f"--users must be at least 1 (got {users}).")
    if args.processes < 1:
        raise SystemExit(f"--processes must be at least 1 (got {args.processes}).")
    if args.processes > 1:
        # pabot and the robot processes it starts run on this interpreter, whatever PATH says;
        # PabotLib on a free port, so two runs on one machine do not fight over 8270
        command = [sys.executable, "-m", "pabot.pabot", "--processes", str(args.processes),
                   "--pabotlibport", "0", "--command", sys.executable, "-m", "robot", "--end-command"]
    else:
        command = [sys.executable, "-m", "robot"]
    command += ["--outputdir", str(outputdir), "--variable", f"STARTUP_USERS:{users}",
                "--variable", f"LOAD_RESULTS_DIR:{summaries}"]
    if args.performance_only:
        command += ["--include", "performance"]
    if args.isolation_only:
        command += ["--include", "isolation"]
    if args.soak:
        command += ["--variable", f"SOAK_USERS:{args.soak}"]
    else:
        command += ["--exclude", "soak"]
    if args.timeout:
        command += ["--variable", f"STARTUP_TIMEOUT:{args.timeout:g}s",
                    "--variable", f"MESSAGE_TIMEOUT:{args.timeout:g}s"]
    if args.verbose:
        command += ["--loglevel", "DEBUG", "--console", "verbose"]
    # suite files are given whole, with suites/__init__.robot starting the platform once;
    # a tag selection (--isolation-only, --performance-only) runs over every suite
    tag_only = args.isolation_only or args.performance_only
    suites = args.suites or ([] if tag_only else list(LOAD_SUITES))
    for suite in suites:
        command += ["--suite", _suite_name(suite)]
    command.append(str(suites_dir()))
    return command


def environment_problem(processes: int) -> str | None:
    """One line naming what this interpreter lacks to run the suites, or None when all is there."""
    needed = ["robot"] + (["pabot"] if processes > 1 else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    packages = {"robot": "robotframework", "pabot": "robotframework-pabot"}
    return (f"Cannot run: {' and '.join(missing)} not importable by {sys.executable}; activate the project's "
            f"venv (. .venv/bin/activate) or pip install robotframework-crosstalk "
            f"({', '.join(packages[m] for m in missing)}).")


# ---------------------------------------------------------------------- summaries
def read_summaries(directories: list[Path]) -> tuple[list[dict], list[dict]]:
    """Every load summary JSON under ``directories``: (summaries without bulk, their encoded histograms)."""
    runs, encoded = [], []
    for directory in directories:
        for file in sorted(directory.glob("*.json")):
            try:
                summary = json.loads(file.read_text())
            except (OSError, ValueError) as error:
                raise SystemExit(f"{file} is not a load summary: {error}") from None
            if not isinstance(summary, dict) or "load_runs" in summary:
                continue  # a merged report (crosstalk merge, --report-file) or another tool's JSON
            encoded.append(summary.pop("histograms_encoded", None) or {})
            summary.pop("per_user", None)
            summary["file"] = str(file)
            runs.append(summary)
    return runs, encoded


def by_scenario(runs: list[dict], encoded: list[dict]) -> dict:
    """One entry per scenario: its runs' HDR histograms merged (e.g. pabot shards of one scenario),
    its latency basis and its own verdict.  Unlike scenarios (a startup burst, closed rounds, an
    open-model run) are never pooled: their percentiles answer different SLAs."""
    from .metrics import merged_percentile

    grouped: dict[str, list[tuple[dict, dict]]] = {}
    for summary, histograms in zip(runs, encoded, strict=True):
        grouped.setdefault(summary.get("scenario") or summary.get("name", "load"), []).append(
            (summary, histograms))
    result = {}
    for scenario, members in grouped.items():
        latency = {}
        for key in LATENCY_KEYS:
            parts = [h.get(key) for _, h in members if h.get(key)]
            if parts:
                latency[key] = {f"p{p:g}_ms": round(merged_percentile(parts, p) * 1e3, 3)
                                for p in CHART_PERCENTILES}
        verdicts = [s.get("verdict", "not checked") for s, _ in members]
        sent = sum(s.get("sent", 0) for s, _ in members)
        duration = max((s.get("duration_s", 0) for s, _ in members), default=0)
        result[scenario] = {
            "runs": len(members),
            "latency_basis": sorted({s.get("latency_basis", "") for s, _ in members} - {""}),
            "users": sum(s.get("users", 0) for s, _ in members),
            "sent": sent,
            "completed": sum(s.get("completed", 0) for s, _ in members),
            "violations": sum(sum((s.get("violations") or {}).values()) for s, _ in members),
            # shards run side by side: their throughputs add up; fairness is the worst shard's
            "throughput_per_s": round(sum(s.get("throughput_per_s", 0) for s, _ in members), 3),
            "fairness_min": min((s["fairness"] for s, _ in members if "fairness" in s), default=None),
            "duration_s": duration,
            "latency": latency,
            "thresholds": [t for s, _ in members for t in s.get("thresholds", [])],
            "verdict": ("failed" if "failed" in verdicts
                        else "passed" if "passed" in verdicts else "not checked"),
        }
    return result


def write_charts(scenarios: dict, directory: Path) -> list[Path]:
    """One SVG per scenario: its merged latency percentiles (pygal, no script, offline)."""
    import pygal

    from .charts import _CONFIG

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario, entry in scenarios.items():
        if not entry["latency"]:
            continue
        chart = pygal.Line(title=f"{scenario}: merged latency by percentile (ms)", x_title="percentile",
                           **_CONFIG)
        chart.x_labels = [f"p{p:g}" for p in CHART_PERCENTILES]
        for key, values in entry["latency"].items():
            chart.add(key, [values.get(f"p{p:g}_ms") for p in CHART_PERCENTILES])
        slug = "".join(c if c.isalnum() else "_" for c in scenario).strip("_") or "load"
        path = directory / f"{slug}-latency.svg"
        rendered = chart.render()
        path.write_bytes(rendered if isinstance(rendered, bytes) else rendered.encode())
        written.append(path)
    return written


def merge_summaries(directories: list[Path], path: Path, charts: Path | None = None) -> int:
    """One report over the load summaries of several shards: per scenario, one verdict for all."""
    for directory in directories:
        if not directory.is_dir():
            raise SystemExit(f"{directory} is not a directory of load summaries (e.g. results/load).")
    runs, encoded = read_summaries(directories)
    if not runs:
        raise SystemExit(f"No load summaries (*.json with latency) in {', '.join(map(str, directories))}.")
    scenarios = by_scenario(runs, encoded)
    passed = all(s["verdict"] != "failed" for s in scenarios.values())
    report = {"merged_from": [str(d) for d in directories], "passed": passed, "scenarios": scenarios,
              "load_runs": runs}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    drawn = write_charts(scenarios, charts or path.parent / "charts")
    print(f"Report: {path} ({len(runs)} load runs, {len(scenarios)} scenarios, "
          f"{'passed' if passed else 'FAILED'}); charts: {len(drawn)} in {charts or path.parent / 'charts'}")
    return 0 if passed else 1


def write_report(path: Path, command: list[str], returncode: int, summaries: Path, started: float) -> None:
    runs, encoded = read_summaries([summaries]) if summaries.is_dir() else ([], [])
    report = {
        "command": command, "passed": returncode == 0, "robot_return_code": returncode,
        "duration_s": round(time.time() - started, 2), "scenarios": by_scenario(runs, encoded),
        "load_runs": runs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"Report: {path} ({len(runs)} load runs)")


# ---------------------------------------------------------------------- entry points
def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.merge_summaries:
        return merge_summaries(args.merge_summaries, args.report_file or results_root() / "merged.json")
    problem = environment_problem(args.processes)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outputdir = (args.outputdir or results_root() / f"run-{stamp}").resolve()
    summaries = outputdir / "load"
    command = build_command(args, outputdir, summaries)
    command[-1:-1] = extra
    print("+ " + " ".join(shlex.quote(part) for part in command), flush=True)
    started = time.time()
    limit = args.timeout * 10 + 120 if args.timeout else None
    process = subprocess.Popen(command, env=dict(os.environ))
    try:
        returncode = process.wait(limit)
    except subprocess.TimeoutExpired:
        print(f"Stopping: the run took longer than {limit:g} s (--timeout {args.timeout:g} x 10 + 120).",
              file=sys.stderr)
        process.terminate()
        try:
            returncode = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait()
        returncode = returncode or 124
    except KeyboardInterrupt:
        process.terminate()
        returncode = process.wait()
    if args.report_file:
        write_report(args.report_file, command, returncode, summaries, started)
    written = sorted(summaries.glob("*.json")) if summaries.is_dir() else []
    if written:
        print(f"Load summaries: {len(written)} in {summaries}")
    print(f"Output: {outputdir}")
    return returncode


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Options before ``--`` are ours; those after go to robot/pabot."""
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    return run(build_parser().parse_args(argv), extra)

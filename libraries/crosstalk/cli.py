"""The ``crosstalk`` command: run, platform, init, summary, merge, cleanup.

    crosstalk run --quick                         # the load suites (robot, or pabot with --processes)
    crosstalk platform                            # the reference platform in the foreground
    crosstalk init my-chat-tests                  # a starter test project for a team
    crosstalk summary results/output.xml          # Markdown for the CI page
    crosstalk merge shard-*/load                  # one SLA verdict and chart set over several shards
    crosstalk cleanup --prefix ct2611301648       # remove a crashed run's test data from the target

Every subcommand has ``--help``; a usage error is one line on stderr (exit 2).

Example:
    main(["summary", "results/output.xml"])
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import NoReturn

from . import __version__


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix (``--help`` has the rest)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _platform(rest: list[str]) -> int:
    missing = [m for m in ("starlette", "uvicorn", "asyncpg") if importlib.util.find_spec(m) is None]
    if missing:
        print("crosstalk platform: the reference platform's servers are not installed "
              f"({', '.join(missing)} missing): pip install 'robotframework-crosstalk[platform]'",
              file=sys.stderr)
        return 2
    # exec: the launcher keeps this process id, so Ctrl-C and SIGTERM reach it directly
    os.execv(sys.executable, [sys.executable, "-m", "reference_platform", *rest])
    return 0  # not reached


def _cleanup(rest: list[str]) -> int:
    if importlib.util.find_spec("crosstalk.cleanup") is None:
        print("crosstalk cleanup: not available in this version of robotframework-crosstalk "
              "(it needs the crosstalk.cleanup module).", file=sys.stderr)
        return 2
    from . import cleanup

    def one_line(self: argparse.ArgumentParser, message: str) -> NoReturn:
        self.exit(2, f"crosstalk cleanup: error: {message} (see crosstalk cleanup --help)\n")

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = one_line  # its own parser, our one-line errors
    try:
        return cleanup.main(rest)
    finally:
        argparse.ArgumentParser.error = original


def build_parser() -> OneLineParser:
    from . import runner

    parser = OneLineParser(
        prog="crosstalk",
        description="Crosstalk: Robot Framework acceptance tests for multi-user AI chat platforms.",
        epilog="Run 'crosstalk COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"robotframework-crosstalk {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the load suites with robot or pabot (arguments after -- go "
                              "to robot/pabot)", description=runner.build_parser().description)
    runner.add_run_options(run)

    commands.add_parser(
        "platform", add_help=False,
        help="start the reference platform (its options: crosstalk platform --help)",
        description="Start the reference platform in the foreground; every option goes to it.")

    init = commands.add_parser(
        "init", help="write a starter test project into DIR",
        description="Write a starter test project for a team: a profile (variable file) for the target, "
        "one example suite on the installed resources, requirements.txt pinning robotframework-crosstalk, "
        "a GitHub Actions workflow and a Jenkinsfile.")
    init.add_argument("directory", type=Path, metavar="DIR",
                      help="the project directory (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite files that already exist")

    commands.add_parser("summary", add_help=False, help="print a run as Markdown (for $GITHUB_STEP_SUMMARY)")

    merge = commands.add_parser(
        "merge", help="merge load summaries of several shards into one SLA verdict and chart set",
        description="Merge the load summaries (and their HDR histograms, losslessly) of several shards or "
        "machines: one verdict per scenario, a JSON report and one latency chart per scenario. "
        "Exit code 1 when a scenario failed its thresholds.")
    merge.add_argument("directories", type=Path, nargs="+", metavar="DIR",
                       help="directories of load summaries (each run's results/.../load)")
    merge.add_argument("--report-file", type=Path, default=Path("results/load-merged.json"),
                       help="the merged JSON report (default results/load-merged.json)")
    merge.add_argument("--charts", type=Path, default=None, metavar="DIR",
                       help="where the SVG charts go (default: charts/ next to the report)")

    commands.add_parser("cleanup", add_help=False,
                        help="remove a crashed run's test data from the target (its options: --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import jobsummary, runner

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # pass-through commands own their options (and their --help)
    if argv and argv[0] in ("platform", "summary", "cleanup"):
        command, rest = argv[0], argv[1:]
        if command == "platform":
            return _platform(rest)
        if command == "summary":
            return jobsummary.main(rest)
        return _cleanup(rest)
    argv, extra = runner.split_extra(argv)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return runner.run(args, extra)
        if extra:
            parser.error(f"'--' passes arguments to robot/pabot: only 'run' takes them, not '{args.command}'")
        if args.command == "init":
            from .starter import write_project

            write_project(args.directory, force=args.force)
            return 0
        if args.command == "merge":
            return runner.merge_summaries(args.directories, args.report_file, args.charts)
    except OSError as error:
        print(f"crosstalk {args.command}: {error}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())

"""Print what a run skipped and why, from its output.xml (after ``pabot`` or ``rebot --merge`` too).

    python -m crosstalk.summary results/output.xml

Each robot process prints its own summary at its end; under pabot those go to the
per-process logs, so this reads the merged output instead.

Example:
    lines = summary.skip_lines_of("results/output.xml")
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def skip_lines_of(output: str) -> list[str]:
    """'N tests skipped: reason' for every distinct reason in ``output``, most frequent first."""
    from robot.api import ExecutionResult

    return group_skips(ExecutionResult(output).suite.all_tests)


def group_skips(tests: Iterable[Any]) -> list[str]:
    """'N tests skipped: reason' for the skipped ``tests``, one line per reason, most frequent first."""
    reasons: dict[str, int] = {}
    for test in tests:
        if test.status == "SKIP":
            reason = " ".join((test.message or "no reason given").split())
            reason = reason.removeprefix("Skipped in parent suite setup: ")
            reasons[reason] = reasons.get(reason, 0) + 1
    return [f"{n} test{'s' if n != 1 else ''} skipped: {reason}"
            for reason, n in sorted(reasons.items(), key=lambda item: -item[1])]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m crosstalk.summary OUTPUT.xml", file=sys.stderr)
        return 2
    lines = skip_lines_of(argv[0])
    print("Crosstalk skipped, and why:" if lines else "Crosstalk skipped nothing.")
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

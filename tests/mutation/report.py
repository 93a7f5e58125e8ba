"""Mutation score and survivors of a Cosmic Ray session, as Markdown for docs/detection.md.

    python tests/mutation/report.py results/mutation/session.sqlite
"""

from __future__ import annotations

import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome


def main(session: str) -> int:
    with use_db(session, WorkDB.Mode.open) as db:
        items = {item.job_id: item for item in db.work_items}
        ran = [(job, result) for job, result in db.results if result.worker_outcome != WorkerOutcome.SKIPPED]
    killed = sum(1 for _, r in ran if r.test_outcome == TestOutcome.KILLED)
    survived = [(items[job], r) for job, r in ran if r.test_outcome == TestOutcome.SURVIVED]
    print(f"{len(ran)} mutants run, {killed} killed, {len(survived)} survived: "
          f"score {100 * killed / max(len(ran), 1):.0f} %\n")
    print("| where | mutation |\n|---|---|")
    def where(survivor: tuple) -> tuple:
        return str(survivor[0].mutations[0].module_path), survivor[0].mutations[0].start_pos

    for item, _ in sorted(survived, key=where):
        mutation = item.mutations[0]
        path = Path(mutation.module_path)
        line = path.read_text().splitlines()[mutation.start_pos[0] - 1].strip()
        print(f"| `{path.name}:{mutation.start_pos[0]}` | {mutation.operator_name} on `{line}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

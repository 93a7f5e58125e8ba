"""Cosmic Ray session filter: keep a random sample of the mutants in the request handlers.

Marks as SKIPPED every mutant that is (1) outside the handler functions listed in HANDLERS
(start-up, shutdown, health and metrics code is not what the suites guard), (2) inside a
branch that runs only with a fault switch on (dead code in a correct platform: every mutant
there is equivalent by construction), (3) inside a type annotation (never evaluated under
``from __future__ import annotations``: equivalent by construction too), or (4) not drawn in
the seeded sample of ``--count``.

    python tests/mutation/sample.py results/mutation/session.sqlite --count 40 --seed 11
"""

from __future__ import annotations

import argparse
import ast
import random
from functools import lru_cache
from pathlib import Path

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

HANDLERS = {
    "auth_service.py": {"AuthService.register", "AuthService.login", "AuthService._token_pair",
                        "AuthService.refresh", "AuthService.logout", "AuthService.me", "_password_matches"},
    "backend_service.py": {
        "BackendService._user", "BackendService._callers_thread", "BackendService._owned_thread",
        "BackendService.list_threads", "BackendService._thread_list", "BackendService.add_message",
        "BackendService.get_thread", "BackendService.thread_messages", "BackendService.delete_thread",
        "BackendService.websocket", "BackendService._send_error", "BackendService._rate_limited",
        "BackendService._handle_frame", "BackendService._emit", "BackendService._ctx_key",
        "BackendService._begin", "BackendService._invalidate_thread_list", "BackendService._history",
        "BackendService._run_agent", "BackendService._fail", "_uuid_or_none", "_storable"},
    "workspaces.py": {"WorkspaceService.create", "WorkspaceService.list", "WorkspaceService._write",
                      "WorkspaceService._create_two_phase"},
    "common.py": {"json_object", "error", "unauthorized", "bearer_token", "authenticate"},
}


def _is_fault_call(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "on"
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "faults" for n in ast.walk(node))


def _negated(test: ast.AST) -> bool:
    return (isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)) or (
        isinstance(test, ast.BoolOp) and all(not _is_fault_call(v) or _negated(v) for v in test.values))


@lru_cache
def annotation_spans(path: Path) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
    """(start, end) positions, as (line, column), of every annotation in the file."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        # def f() -> X, an argument x: X, an assignment a: X = …
        found = getattr(node, "returns", None) or getattr(node, "annotation", None)
        if found is not None:
            spans.append(((found.lineno, found.col_offset), (found.end_lineno, found.end_col_offset)))
    return tuple(spans)


def in_annotation(path: Path, position: tuple[int, int]) -> bool:
    return any(start <= tuple(position) < end for start, end in annotation_spans(path))


@lru_cache
def line_map(path: Path) -> tuple[dict[int, str], frozenset[int]]:
    """Line -> qualified name of the innermost function; and the lines only a fault switch runs."""
    tree = ast.parse(path.read_text())
    owner: dict[int, str] = {}
    fault_only: set[int] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    for line in range(child.lineno, child.end_lineno + 1):
                        owner[line] = name
                visit(child, f"{name}.")
            else:
                if isinstance(child, ast.If) and _is_fault_call(child.test):
                    branch = child.orelse if _negated(child.test) else child.body
                    for statement in branch:
                        fault_only.update(range(statement.lineno, statement.end_lineno + 1))
                visit(child, prefix)

    visit(tree, "")
    return owner, frozenset(fault_only)


def eligible(module_path: Path, position: tuple[int, int]) -> bool:
    handlers = HANDLERS.get(module_path.name, set())
    owner, fault_only = line_map(module_path)
    line = position[0]
    return owner.get(line) in handlers and line not in fault_only and not in_annotation(module_path, position)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("session")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    skipped = WorkResult(output=None, test_outcome=None, diff=None, worker_outcome=WorkerOutcome.SKIPPED)
    with use_db(args.session) as db:
        items = list(db.work_items)
        keep = [item.job_id for item in items
                if all(eligible(Path(m.module_path), tuple(m.start_pos)) for m in item.mutations)]
        sample = set(random.Random(args.seed).sample(keep, min(args.count, len(keep))))
        for item in items:
            if item.job_id not in sample:
                db.set_result(item.job_id, skipped)
    print(f"{len(items)} mutants in the session, {len(keep)} in handler code outside fault branches and "
          f"annotations, "
          f"{len(sample)} sampled (seed {args.seed}); the rest marked skipped")


if __name__ == "__main__":
    main()

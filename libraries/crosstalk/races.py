"""Race engine: fire N operations at one instant, collect every outcome, judge exactly-once.

Operations run in threads released together by a ``threading.Barrier`` (psycopg2,
requests and the blocking helpers of ``crosstalk.connection`` all block, and threads
put the requests on the wire within a millisecond or two of each other).  Every
operation has its own timeout; a wait that times out becomes a failed ``Outcome``
whose error names the actor and what it was waiting for, never a hang.

Only the barrier and the judges live here: the operations use the libraries' own
clients (``crosstalk.rest``, ``crosstalk.connection``, ``crosstalk.stores``).  The
judges (``exactly_one_winner``, ``counter_report``, ...) are pure functions over
outcomes and observed state, so they are unit-tested without a platform.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import CrosstalkError
from .htmllog import table


class RaceError(CrosstalkError):
    """A race check failed; the message names the anomaly."""


@dataclass
class Outcome:
    actor: str
    ok: bool
    value: Any = None
    error: str = ""
    started: float = 0.0
    ended: float = 0.0

    @property
    def status(self) -> Any:
        return getattr(self.value, "status_code", self.value)

    def __str__(self) -> str:
        what = f"ok {self.status}" if self.ok else f"error {self.error}"
        return f"{self.actor}: {what} ({(self.ended - self.started) * 1000:.0f} ms)"


def fire_at_once(
    actors: Sequence[str], operation: Callable[[int, str], Any], timeout: float
) -> list[Outcome]:
    """Run ``operation(index, actor)`` for every actor in its own thread, released together.

    Exceptions become failed outcomes.  ``timeout`` bounds the whole race; an
    operation still running then is reported as timed out.
    """
    if not actors:
        raise ValueError("a race needs at least one actor")
    barrier = threading.Barrier(len(actors))
    outcomes: list[Outcome | None] = [None] * len(actors)

    def run(index: int, actor: str) -> None:
        try:
            barrier.wait(timeout)
        except threading.BrokenBarrierError:
            outcomes[index] = Outcome(actor, False, error="the barrier broke before all actors were ready")
            return
        started = time.monotonic()
        try:
            value = operation(index, actor)
            outcomes[index] = Outcome(actor, True, value, started=started, ended=time.monotonic())
        except Exception as exc:  # every failure is an outcome to judge, not a crash of the race
            outcomes[index] = Outcome(
                actor, False, error=f"{type(exc).__name__}: {exc}", started=started, ended=time.monotonic()
            )

    threads = [threading.Thread(target=run, args=(i, a), daemon=True) for i, a in enumerate(actors)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        outcome or Outcome(actors[i], False, error=f"still running after the race timeout of {timeout:g} s")
        for i, outcome in enumerate(outcomes)
    ]


def outcomes_table(caption: str, outcomes: Sequence[Outcome]) -> str:
    """The outcomes of a race as an HTML table (actor, result, status or error, ms) for the log."""
    rows = [
        (o.actor, "ok" if o.ok else "error", o.status if o.ok else o.error,
         f"{(o.ended - o.started) * 1000:.0f}")
        for o in outcomes
    ]
    return table(("actor", "result", "status / error", "ms"), rows, caption)


# ---------------------------------------------------------------------- judges
def exactly_one_winner(
    outcomes: Sequence[Outcome],
    what: str,
    win: Callable[[Outcome], bool],
    lose: Callable[[Outcome], bool],
    loser_text: str,
) -> Outcome:
    winners = [o for o in outcomes if win(o)]
    others = [o for o in outcomes if not win(o) and not lose(o)]
    if len(winners) != 1:
        listing = "; ".join(str(o) for o in winners) or "none"
        raise RaceError(
            f"{what}: {len(winners)} of {len(outcomes)} concurrent attempts won, exactly one must "
            f"(winners: {listing})"
        )
    if others:
        raise RaceError(
            f"{what}: {len(others)} attempt(s) neither won nor got {loser_text}: "
            + "; ".join(str(o) for o in others[:5])
        )
    return winners[0]


def counter_report(expected: int, counter: int, rows: int, what: str) -> None:
    if counter == expected == rows:
        return
    lost = expected - counter
    detail = f"lost update: {lost} of {expected} increments vanished" if lost > 0 else "counter drifted"
    raise RaceError(f"{what}: {detail} (counter says {counter}, {rows} rows exist, {expected} expected)")


def duplicates(values: Sequence[str]) -> list[str]:
    return [value for value, count in Counter(values).items() if count > 1]


@dataclass
class WorkspaceState:
    user: str
    auth_count: int
    backend_ids: list[str]
    analytics_ids: list[str]

    @property
    def consistent(self) -> bool:
        return self.auth_count == len(self.backend_ids) == len(self.analytics_ids) and sorted(
            self.backend_ids
        ) == sorted(self.analytics_ids)

    def __str__(self) -> str:
        return (
            f"{self.user}: auth workspace_count={self.auth_count}, backend workspaces="
            f"{len(self.backend_ids)}, analytics workspace_created events={len(self.analytics_ids)}"
        )


def partial_state_report(state: WorkspaceState) -> str:
    applied = []
    if state.auth_count:
        applied.append(f"auth (workspace_count={state.auth_count})")
    if state.backend_ids:
        applied.append(f"backend ({len(state.backend_ids)} workspace rows)")
    if state.analytics_ids:
        applied.append(f"analytics ({len(state.analytics_ids)} events)")
    missing_events = sorted(set(state.backend_ids) - set(state.analytics_ids))
    missing_rows = sorted(set(state.analytics_ids) - set(state.backend_ids))
    detail = "; ".join(
        filter(
            None,
            [
                f"stores applied: {', '.join(applied) or 'none'}",
                f"workspaces without event: {missing_events}" if missing_events else "",
                f"events without workspace: {missing_rows}" if missing_rows else "",
            ],
        )
    )
    return f"partially applied cross-service transaction for {state}; {detail}"

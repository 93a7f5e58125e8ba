"""Pure logic of the race engine: the barrier, the judges, the cross-store report."""

from __future__ import annotations

import threading
import time

import pytest
from crosstalk.races import (
    Outcome,
    RaceError,
    WorkspaceState,
    counter_report,
    duplicates,
    exactly_one_winner,
    fire_at_once,
    outcomes_table,
    partial_state_report,
)


def test_fire_at_once_releases_all_actors_together():
    starts: list[float] = []
    lock = threading.Lock()

    def op(index: int, actor: str) -> str:
        with lock:
            starts.append(time.monotonic())
        return actor.upper()

    outcomes = fire_at_once([f"a{i}" for i in range(20)], op, timeout=5)
    assert [o.value for o in outcomes] == [f"A{i}" for i in range(20)]
    assert max(starts) - min(starts) < 0.5


def test_fire_at_once_turns_exceptions_and_timeouts_into_failed_outcomes():
    def op(index: int, actor: str):
        if index == 0:
            raise ValueError("boom")
        if index == 1:
            time.sleep(2)
        return index

    outcomes = fire_at_once(["x", "slow", "ok"], op, timeout=0.5)
    assert not outcomes[0].ok and "ValueError: boom" in outcomes[0].error
    assert not outcomes[1].ok and "still running after the race timeout" in outcomes[1].error
    assert outcomes[2].ok and outcomes[2].value == 2


def test_fire_at_once_refuses_an_empty_race():
    with pytest.raises(ValueError, match="at least one actor"):
        fire_at_once([], lambda i, a: None, 1)


def _outcomes(*statuses):
    return [Outcome(f"c{i}", True, status) for i, status in enumerate(statuses)]


def test_exactly_one_winner_accepts_one_winner_and_losers():
    winner = exactly_one_winner(_outcomes(401, 200, 401), "refresh", lambda o: o.value == 200,
                                lambda o: o.value == 401, "401")
    assert winner.actor == "c1"


@pytest.mark.parametrize("statuses,phrase", [
    ((200, 200, 401), "2 of 3 concurrent attempts won"),
    ((401, 401), "0 of 2 concurrent attempts won"),
    ((200, 500), "neither won nor got 401"),
])
def test_exactly_one_winner_names_the_anomaly(statuses, phrase):
    with pytest.raises(RaceError, match=phrase):
        exactly_one_winner(_outcomes(*statuses), "refresh", lambda o: o.value == 200,
                           lambda o: o.value == 401, "401")


def test_counter_report_names_lost_updates():
    counter_report(52, 52, 52, "thread")
    with pytest.raises(RaceError, match="lost update: 47 of 52 increments vanished"):
        counter_report(52, 5, 52, "thread")
    with pytest.raises(RaceError, match="counter drifted"):
        counter_report(52, 53, 52, "thread")


def test_duplicates():
    assert duplicates(["a", "b", "a", "c", "c"]) == ["a", "c"]
    assert duplicates(["a", "b"]) == []


def test_workspace_state_consistency_and_partial_report():
    assert WorkspaceState("u", 2, ["w1", "w2"], ["w2", "w1"]).consistent
    half = WorkspaceState("u", 1, ["w1"], [])
    assert not half.consistent
    report = partial_state_report(half)
    assert "partially applied cross-service transaction" in report
    assert "auth (workspace_count=1)" in report and "backend (1 workspace rows)" in report
    assert "workspaces without event: ['w1']" in report


def test_outcomes_table_lists_actor_result_and_escapes_errors():
    html = outcomes_table("race <1>", [Outcome("c1", True, 200, started=1.0, ended=1.25),
                                       Outcome("c2", False, error="<boom>", started=1.0, ended=1.5)])
    cells = [part.split("<", 1)[0] for part in html.split("vertical-align:top\">")[1:]]
    assert "race &lt;1&gt;" in html
    assert cells == ["c1", "ok", "200", "250", "c2", "error", "&lt;boom&gt;", "500"]

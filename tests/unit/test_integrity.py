"""Pure logic of the integrity checks: the rank test, the channel list and the persistence oracle."""

from __future__ import annotations

import math
import random

import pytest
from crosstalk.integrity import (
    StreamedRun,
    channels_for,
    compare_timings,
    mann_whitney_u,
    reconcile_rest,
    reconcile_rows,
    reconcile_stream,
    side_channels,
)


def test_rank_test_matches_the_textbook_normal_approximation():
    result = mann_whitney_u(list(range(1, 11)), list(range(11, 21)))
    assert result.u == 0
    z = (50 - 0.5) / math.sqrt(10 * 10 * 21 / 12)
    assert result.p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert result.p == pytest.approx(1.83e-4, rel=0.02)


def test_rank_test_handles_ties_and_identical_samples():
    assert mann_whitney_u([5.0] * 10, [5.0] * 10).p == 1.0
    tied = mann_whitney_u([1, 2, 2, 3, 3, 3, 4], [2, 3, 3, 5, 5, 6, 6, 6])
    assert 0.0 < tied.p < 0.1 and tied.u == 10  # pairs where a wins, ties half
    with pytest.raises(ValueError, match="at least 2 values"):
        mann_whitney_u([1.0], [1.0, 2.0])


def test_false_alarm_rate_stays_near_alpha_when_both_paths_take_the_same_time():
    rng = random.Random(7)
    alpha, runs = 0.01, 2000
    alarms = sum(
        mann_whitney_u([rng.lognormvariate(0, 0.3) for _ in range(40)],
                       [rng.lognormvariate(0, 0.3) for _ in range(40)]).p < alpha
        for _ in range(runs)
    )
    assert alarms / runs < 2 * alpha


def test_timing_verdict_needs_significance_and_a_practical_gap():
    rng = random.Random(3)
    fast = [0.002 + rng.random() * 0.001 for _ in range(30)]
    slow = [0.040 + rng.random() * 0.010 for _ in range(30)]
    assert compare_timings(fast, slow, 0.001, 0.010).distinguishable
    close = [value + 0.001 for value in fast]  # significant but only 1 ms apart
    verdict = compare_timings(fast, close, 0.001, 0.010)
    assert verdict.test.p < 0.001 and not verdict.distinguishable
    assert "Mann-Whitney" in verdict.describe("a", "b")


def test_side_channels_leave_out_only_the_contract_header():
    names = [c.name for c in side_channels("tok")]
    assert not any(name.startswith("Authorization: Bearer") for name in names)
    assert any("?access_token=" in name for name in names) and any("cookie" in name for name in names)
    assert any("Sec-WebSocket-Protocol" in name for name in names)
    for scheme in ("Basic", "Token", "JWT"):  # another scheme carrying a bearer token
        assert any(name.startswith(f"Authorization: {scheme} ") for name in names)
    duplicated = [c for c in channels_for("bad", genuine="good") if c.name.startswith("duplicated")]
    assert len(duplicated) == 2 and all(len(c.headers) == 2 for c in duplicated)


def _run(**overrides) -> StreamedRun:
    events = [{"type": "agent_started", "thread_id": "t1"},
              {"type": "agent_completed", "thread_id": "t1", "payload": {"response": "answer"}}]
    values = {"user": "alice", "user_id": "u1", "run_id": "r1", "thread_id": "t1", "client_message_id": "c1",
              "content": "question", "events": events} | overrides
    return StreamedRun(**values)


def _stored(thread: str = "t1", answer: str = "answer") -> list[dict]:
    return [{"role": "user", "run_id": "r1", "client_message_id": "c1", "content": "question"},
            {"role": "agent", "run_id": "r1", "client_message_id": "c1", "content": answer}]


def test_a_faithful_store_reconciles():
    run = _run()
    assert reconcile_stream(run) == []
    assert reconcile_rest(run, _stored(), 2) == []
    rows = [("t1", "u1", "user", "c1"), ("t1", "u1", "agent", "c1")]
    assert reconcile_rows(run, rows, ("t1", "u1", "completed"), ("u1", 2), 2) == []


def test_the_oracle_names_what_differs():
    run = _run()
    assert "agent answers" in " ".join(reconcile_rest(run, _stored()[:1], 1))
    assert "message_count 3" in " ".join(reconcile_rest(run, _stored(), 3))
    rows = [("t1", "u1", "user", "c1"), ("t9", "u1", "agent", "c1")]
    assert "in thread t9" in " ".join(reconcile_rows(run, rows, ("t1", "u1", "completed"), ("u1", 2), 2))
    assert "runs.status is 'running'" in " ".join(
        reconcile_rows(run, [*rows[:1], ("t1", "u1", "agent", "c1")], ("t1", "u1", "running"), ("u1", 2), 2))
    twice = _run(events=[*_run().events, {"type": "agent_error", "thread_id": "t1"}])
    assert "2 terminal events" in " ".join(reconcile_stream(twice))
    failed = _run(events=[{"type": "agent_error", "thread_id": "t1"}])
    assert reconcile_rest(failed, _stored()[:1], 1) == []


def test_runs_are_rebuilt_from_recorded_frames():
    from types import SimpleNamespace as Frame

    from crosstalk.integrity import runs_from_frames

    def frame(direction, **data):
        return Frame(direction=direction, data=data)

    frames = [
        frame("out", type="user_message", client_message_id="c1", content="q1"),
        frame("out", type="user_message", client_message_id="c2", content="q2"),
        frame("out", type="user_message", client_message_id="c3", content="q3"),
        frame("in", type="agent_started", client_message_id="c1", run_id="r1", thread_id="t1"),
        frame("in", type="error", client_message_id="c2", code="thread_not_found"),
        frame("in", type="agent_started", client_message_id="c3", run_id="r3", thread_id="t3"),
        frame("in", type="agent_completed", client_message_id="c1", run_id="r1", thread_id="t1",
              payload={"response": "a1"}),
    ]
    runs = runs_from_frames("alice", "u1", frames)
    assert [(r.run_id, r.thread_id, r.content, r.answer) for r in runs] == [("r1", "t1", "q1", "a1")]

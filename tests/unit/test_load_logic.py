"""Bookkeeping of the load driver, fed with hand-made frames (no sockets: pure logic)."""

from __future__ import annotations

import asyncio
import json

import pytest
from assertionengine import AssertionOperator
from crosstalk.load import LoadConfig, LoadModel, LoadRun, LoadUser, bounded, foreign_canaries
from crosstalk.loadcore import RecentSet
from crosstalk.metrics import LoadMetrics
from crosstalk.model import TestUser


class FakeConnection:
    """Stands in for the socket: records what would be sent."""

    closed = False
    close_code = None
    close_reason = ""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None, str]] = []

    async def send_text(self, text, data=None):
        body = json.loads(text)
        self.sent.append((body["content"], body.get("thread_id"), body["client_message_id"]))


def _user(label: str, user_id: str, metrics: LoadMetrics | None = None, owners=None) -> LoadUser:
    metrics = metrics or LoadMetrics("unit")
    user = TestUser(label=label, email=f"{label}@x.test", password="pw-123456789",
                    canary=f"CANARY-{label}-abc", user_id=user_id)
    lu = LoadUser(bounded(user, 8), metrics.user(label), metrics, owners)
    lu.connection = FakeConnection()  # type: ignore[assignment]
    return lu


def _event(lu: LoadUser, kind: str, cmid: str, seq: int = 1, **extra) -> dict:
    return {"type": kind, "client_message_id": cmid, "user_id": lu.user.user_id, "run_id": "run-1",
            "thread_id": "thread-1", "seq": seq, **extra}


def _full_run(lu: LoadUser, cmid: str, content: str, start: float, run_id: str = "run-1") -> None:
    kinds = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]
    for seq, kind in enumerate(kinds, start=1):
        payload = {"tool_call_id": "c1"} if kind.startswith("tool_") else {}
        if kind == "agent_completed":
            payload = {"response": f"You said: {content}"}
        lu.on_event({**_event(lu, kind, cmid, seq), "run_id": run_id, "payload": payload}, start + 0.01 * seq)


def _run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_a_complete_run_records_first_event_gaps_and_completion():
    lu = _user("u1", "id-1")

    async def scenario():
        pending = await lu.send(0.0)
        content, _, cmid = lu.connection.sent[0]
        _full_run(lu, cmid, content, 0.0)
        return await lu.wait(pending, 1.0)

    assert _run(scenario()) is None
    m = lu.metrics
    assert m.completed == 1 and m.error_count == 0 and m.events == 5
    assert m.stat("first_event", "max") == pytest.approx(0.010, rel=0.01)
    assert m.stat("completion", "max") == pytest.approx(0.050, rel=0.01)
    assert m.histograms["gap"].get_total_count() == 4
    assert "run-1" in m.run_ids and len(m.run_ids) == 1 and lu.thread_id == "thread-1"


def test_an_answer_without_the_users_message_is_an_error():
    lu = _user("u1", "id-1")

    async def scenario():
        pending = await lu.send(0.0)
        cmid = lu.connection.sent[0][2]
        kinds = ("agent_started", "agent_thinking", "tool_executing", "tool_completed")
        for seq, kind in enumerate(kinds, 1):
            lu.on_event(_event(lu, kind, cmid, seq, payload={"tool_call_id": "c"}), 0.01)
        lu.on_event(_event(lu, "agent_completed", cmid, 5, payload={"response": "someone else's text"}), 0.02)
        return await lu.wait(pending, 1.0)

    assert _run(scenario()) == "wrong_answer"
    assert lu.metrics.completed == 0 and lu.metrics.errors["wrong_answer"] == 1


def test_events_of_other_users_count_as_misrouted():
    lu = _user("u1", "id-1")
    other = _user("u2", "id-2")

    async def scenario():
        await lu.send(0.0)
        cmid = lu.connection.sent[0][2]
        lu.on_event(_event(other, "agent_started", cmid), 0.01)  # right message id, wrong user id
        lu.on_event(_event(lu, "agent_started", "someone-elses-cmid"), 0.01)

    _run(scenario())
    assert lu.metrics.misrouted == 2 and lu.metrics.errors["misrouted"] == 2
    assert lu.metrics.judge("routing_accuracy", AssertionOperator["=="], "100%").passed is False


def test_an_error_naming_no_message_answers_the_oldest_unstarted_message():
    lu = _user("u1", "id-1")

    async def scenario():
        first = await lu.send(0.0)
        await lu.send(0.1)
        lu.on_event({"type": "error", "code": "rate_limited", "message": "slow down",
                     "client_message_id": None}, 0.2)
        return await lu.wait(first, 1.0)

    assert _run(scenario()) == "error:rate_limited"
    assert lu.metrics.misrouted == 0 and len(lu.pending) == 1


def test_a_silent_run_times_out_with_a_message_naming_user_and_message():
    lu = _user("u1", "id-1")

    async def scenario():
        pending = await lu.send(0.0)
        return await lu.wait(pending, 0.05)

    assert _run(scenario()) == "timeout"
    assert "u1" in lu.metrics.error_examples["timeout"]
    assert "agent_completed" in lu.metrics.error_examples["timeout"]


def test_a_dropped_connection_fails_the_messages_in_flight():
    lu = _user("u1", "id-1")

    async def scenario():
        pending = await lu.send(0.0)
        lu.on_closed()
        return await lu.wait(pending, 1.0)

    assert _run(scenario()) == "lost_in_drop"
    assert lu.stats.dropped and lu.metrics.errors["connection_dropped"] == 1


def test_foreign_canaries_are_caught_as_the_frame_arrives():
    metrics = LoadMetrics("unit")
    owners = {"CANARY-a-abc": "a", "CANARY-b-abc": "b"}
    a, b = _user("a", "id-a", metrics, owners), _user("b", "id-b", metrics, owners)
    run = LoadRun(LoadConfig(users=2), metrics, [a, b])
    leak = f'{{"type":"agent_completed","payload":{{"response":"{b.user.canary}-m1"}}}}'
    a.on_frame(leak, json.loads(leak), 0.0)
    own = f'{{"type":"agent_thinking","payload":{{"thought":"{a.user.canary}-m1"}}}}'
    a.on_frame(own, json.loads(own), 0.0)
    found = foreign_canaries(run)
    assert len(found) == 1 and "user 'a' received b's canary" in found[0]
    assert metrics.violations["foreign_canary"] == 1


def test_a_run_out_of_order_is_a_contract_error_caught_on_arrival():
    lu = _user("u1", "id-1")

    async def scenario():
        pending = await lu.send(0.0)
        content, _, cmid = lu.connection.sent[0]
        lu.on_event(_event(lu, "agent_started", cmid, 1), 0.01)
        lu.on_event(_event(lu, "tool_completed", cmid, 2, payload={"tool_call_id": "c"}), 0.02)
        lu.on_event(_event(lu, "agent_completed", cmid, 4, payload={"response": content}), 0.03)
        return await lu.wait(pending, 1.0)

    assert _run(scenario()) == "contract"
    assert "seq is not 1..3" in lu.metrics.error_examples["contract"]


def test_memory_is_bounded_by_users_not_messages():
    lu = _user("u1", "id-1")

    async def scenario():
        for n in range(200):
            pending = await lu.send(float(n))
            content, _, cmid = lu.connection.sent[-1]
            _full_run(lu, cmid, content, float(n), run_id=f"run-{n}")
            assert await lu.wait(pending, 1.0) is None

    _run(scenario())
    assert lu.metrics.completed == 200 and len(lu.metrics.run_ids) == 200
    assert lu.pending == {} and len(lu.user.frames) <= 8
    assert isinstance(lu.user.run_ids, RecentSet) and len(lu.user.run_ids) <= 16
    assert {"x"} | lu.user.thread_ids == {"x", "thread-1"}  # set algebra gives plain sets


def test_the_closed_model_is_corrected_for_coordinated_omission():
    m = LoadMetrics("closed")
    for _ in range(95):
        m.record_completion(m.user("u"), 0.050, 0.0)
    for _ in range(5):
        m.record_completion(m.user("u"), 1.000, 0.0)  # one stalled sample per user
    assert m.percentile("completion", 95.0) < 0.06
    m.correct_for_coordinated_omission(0.050)
    assert m.percentile("completion", 95.0) > 0.5  # the samples the stall held back are back-filled
    assert m.histograms["completion_uncorrected"].get_total_count() == 100
    assert "coordinated omission" in m.latency_basis
    assert "coordinated omission" in m.judge("completion.p95", AssertionOperator[">"], "1s").failure


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LoadConfig(users=0), "users must be at least 1"),
        (LoadConfig(users=1, messages=0), "messages must be at least 1"),
        (LoadConfig(users=1, model=LoadModel.OPEN), "open model needs a rate"),
    ],
)
def test_bad_configurations_say_what_to_change(config, message):
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_a_hostile_frame_is_a_violation_not_a_crash():
    lu = _user("u1", "id-1")
    lu.on_frame('{"client_message_id": ["x"], "type": "agent_started"}',
                {"client_message_id": ["x"], "type": "agent_started"}, 0.0)
    lu.on_frame("not json", None, 0.0)
    assert lu.metrics.violations == {"misrouted": 1, "contract": 1}

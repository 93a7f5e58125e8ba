"""Bookkeeping of the load driver, fed with hand-made frames (no sockets: pure logic)."""

from __future__ import annotations

import asyncio

import pytest
from crosstalk.load import LoadConfig, LoadModel, LoadRun, LoadUser, foreign_canaries
from crosstalk.metrics import LoadMetrics
from crosstalk.model import Frame, TestUser


class FakeConnection:
    """Stands in for the socket: records what would be sent."""

    closed = False
    close_code = None
    close_reason = ""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None, str]] = []

    async def send_message(self, content, thread_id, cmid, echo_token=None):
        self.sent.append((content, thread_id, cmid))


def _user(label: str, user_id: str) -> LoadUser:
    metrics = LoadMetrics("unit")
    user = TestUser(label=label, email=f"{label}@x.test", password="pw-123456789",
                    canary=f"CANARY-{label}-abc", user_id=user_id)
    lu = LoadUser(user, metrics.user(label), metrics)
    lu.connection = FakeConnection()  # type: ignore[assignment]
    return lu


def _event(lu: LoadUser, kind: str, cmid: str, **extra) -> dict:
    return {"type": kind, "client_message_id": cmid, "user_id": lu.user.user_id, "run_id": "run-1",
            "thread_id": "thread-1", **extra}


def _run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_a_complete_run_records_first_event_gaps_and_completion():
    lu = _user("u1", "id-1")

    async def scenario():
        pending = await lu.send(0.0)
        content, _, cmid = lu.connection.sent[0]
        lu.on_event(_event(lu, "agent_started", cmid), 0.010)
        lu.on_event(_event(lu, "agent_thinking", cmid), 0.015)
        answer = {"response": f"You said: {content}"}
        lu.on_event(_event(lu, "agent_completed", cmid, payload=answer), 0.030)
        return await lu.wait(pending, 1.0)

    assert _run(scenario()) is None
    m = lu.metrics
    assert m.completed == 1 and m.error_count == 0 and m.events == 3
    assert m.stat("first_event", "max") == pytest.approx(0.010, rel=0.01)
    assert m.stat("completion", "max") == pytest.approx(0.030, rel=0.01)
    assert m.histograms["gap"].get_total_count() == 2
    assert m.run_ids == {"run-1"} and lu.thread_id == "thread-1"


def test_an_answer_without_the_users_message_is_an_error():
    lu = _user("u1", "id-1")

    async def scenario():
        pending = await lu.send(0.0)
        cmid = lu.connection.sent[0][2]
        lu.on_event(_event(lu, "agent_completed", cmid, payload={"response": "someone else's text"}), 0.02)
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
    assert lu.metrics.check("routing_accuracy == 100%").passed is False


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


def test_foreign_canaries_are_found_in_incoming_frames():
    a, b = _user("a", "id-a"), _user("b", "id-b")
    run = LoadRun(LoadConfig(users=2), a.metrics, [a, b])
    leak = f'{{"type":"agent_completed","payload":{{"response":"{b.user.canary}-m1"}}}}'
    a.user.frames.append(Frame("in", 0.0, 0.0, leak, None, "a#load"))
    a.user.frames.append(Frame("in", 0.0, 0.0, f"{a.user.canary}-m1", None, "a#load"))
    found = foreign_canaries(run)
    assert len(found) == 1 and "user 'a' received b's canary" in found[0]


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

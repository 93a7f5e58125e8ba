"""Frame recording, run-handle routing and wait failures of a connection, without a socket."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from crosstalk.connection import RunHandle, UserConnection, frame_matches
from crosstalk.model import TestUser


class FakeSocket:
    def __init__(self):
        self.sent: list[str] = []

    async def send(self, text):
        self.sent.append(text)


def make_connection() -> UserConnection:
    user = TestUser("alice", "alice@x.test", "pw", "CANARY-A", user_id="u-alice")
    connection = UserConnection(user, "alice#1", "ws://unused")
    connection.ws = FakeSocket()  # type: ignore[assignment]
    connection._condition = asyncio.Condition()
    return connection


def event(kind, cmid, seq, run_id="run-1", thread_id="t-1", **payload):
    return json.dumps(
        {
            "type": kind,
            "run_id": run_id,
            "thread_id": thread_id,
            "client_message_id": cmid,
            "user_id": "u-alice",
            "seq": seq,
            "payload": payload,
        }
    )


def receive(connection, raw):
    connection._record("in", raw, time.time(), time.monotonic())


def test_run_handle_resolves_run_and_thread_and_records_frames():
    async def scenario():
        connection = make_connection()
        run = await connection.send_message("hello")
        assert json.loads(connection.ws.sent[0])["client_message_id"] == run.client_message_id
        receive(connection, event("agent_started", run.client_message_id, 1, agent="triage"))
        receive(connection, event("agent_completed", run.client_message_id, 2, response="You said hello"))
        return connection, run

    connection, run = asyncio.run(scenario())
    assert run.run_id == "run-1" and run.thread_id == "t-1"
    assert run.status == "completed" and run.answer == "You said hello"
    assert run.time_to_first_event is not None and run.time_to_done >= run.time_to_first_event
    assert [f.direction for f in connection.user.frames] == ["out", "in", "in"]
    assert connection.user.run_ids == {"run-1"} and connection.user.thread_ids == {"t-1"}


def test_foreign_events_are_recorded_but_not_claimed_as_the_users_runs():
    async def scenario():
        connection = make_connection()
        receive(connection, event("agent_started", "someone-elses-cmid", 1, run_id="run-x", thread_id="t-x"))
        return connection

    connection = asyncio.run(scenario())
    assert len(connection.user.frames) == 1  # the oracle sees the foreign frame
    assert connection.user.run_ids == set() and connection.user.thread_ids == set()


def test_error_frame_rejects_the_run():
    async def scenario():
        connection = make_connection()
        run = await connection.send_message("x", thread_id="not-mine")
        receive(
            connection,
            json.dumps(
                {"type": "error", "code": "thread_not_found", "client_message_id": run.client_message_id}
            ),
        )
        return await connection.wait_for_run(run, 1)

    run = asyncio.run(scenario())
    assert run.status == "rejected" and run.rejection["code"] == "thread_not_found"


def test_wait_wakes_up_on_a_frame_arriving_later():
    async def scenario():
        connection = make_connection()
        run = await connection.send_message("hello")
        loop = asyncio.get_running_loop()
        loop.call_later(
            0.05, receive, connection, event("agent_error", run.client_message_id, 1, message="boom")
        )
        started = time.monotonic()
        await connection.wait_for_run(run, 5)
        return run, time.monotonic() - started

    run, waited = asyncio.run(scenario())
    assert run.status == "failed" and waited < 1


def test_wait_timeout_names_user_run_awaited_and_what_arrived():
    async def scenario():
        connection = make_connection()
        run = await connection.send_message("hello")
        receive(connection, event("agent_started", run.client_message_id, 1, agent="triage"))
        await connection.wait_for_run(run, 0.05)

    with pytest.raises(AssertionError) as failure:
        asyncio.run(scenario())
    message = str(failure.value)
    for part in (
        "User 'alice'",
        "alice#1",
        "run run-1",
        "did not finish within 0.05 s",
        "awaited agent_completed or agent_error",
        "agent_started seq 1",
    ):
        assert part in message


def test_wait_for_event_timeout_reports_last_frames():
    async def scenario():
        connection = make_connection()
        receive(connection, json.dumps({"type": "error", "code": "invalid_json"}))
        await connection.wait_for_event("error", {"code": "rate_limited"}, 0.05)

    with pytest.raises(AssertionError, match=r"did not receive error with code=rate_limited .*invalid_json"):
        asyncio.run(scenario())


def test_closed_connection_ends_wait_at_once_and_says_so():
    async def scenario():
        connection = make_connection()
        run = await connection.send_message("hello")
        connection.closed, connection.close_code, connection.close_reason = True, 4401, "token revoked"
        started = time.monotonic()
        try:
            await connection.wait_for_run(run, 5)
        finally:
            assert time.monotonic() - started < 1

    with pytest.raises(AssertionError, match="closed with code 4401 'token revoked'"):
        asyncio.run(scenario())


def test_listeners_see_every_frame():
    seen = []

    async def scenario():
        connection = make_connection()
        connection.listeners.append(seen.append)
        await connection.send_raw("{not json")
        receive(connection, "plain text")

    asyncio.run(scenario())
    assert [(f.direction, f.data) for f in seen] == [("out", None), ("in", None)]


def test_frame_matches_dotted_fields_as_text():
    async def scenario():
        connection = make_connection()
        receive(connection, event("agent_thinking", "c", 3, agent="cost", handoff_from="triage"))
        return connection.frames[0]

    frame = asyncio.run(scenario())
    assert frame_matches(frame, "agent_thinking", {"payload.handoff_from": "triage", "seq": "3"})
    assert not frame_matches(frame, "agent_thinking", {"payload.missing": "x"})
    assert not frame_matches(frame, "agent_started", {})


def test_run_handle_str_has_no_content():
    user = TestUser("bob", "b@x.test", "pw", "C")
    run = RunHandle(user, "bob#1", "cm-1", "secret content", None, 0.0, 0.0)
    assert "secret content" not in str(run) and "bob" in str(run)


def test_a_frame_nested_too_deep_to_parse_is_recorded_as_not_json_and_bytes_go_out_as_bytes():
    async def scenario():
        connection = make_connection()
        deep = "[" * 50_000 + "]" * 50_000
        receive(connection, deep)  # a hostile server must not break the reader
        sent = await connection.send_raw(b"\xff\xfe not UTF-8")
        return connection, sent

    connection, sent = asyncio.run(scenario())
    assert connection.frames[0].data is None and connection.frames[0].raw.startswith("[[[")
    assert connection.ws.sent[-1] == b"\xff\xfe not UTF-8"  # a binary frame, as given
    assert sent.direction == "out" and "not UTF-8" in sent.raw

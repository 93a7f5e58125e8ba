"""Frame validation against the AsyncAPI contract: verdicts and the wording of violations."""

from __future__ import annotations

import asyncio
import json

import pytest
from crosstalk.connection import UserConnection
from crosstalk.contract import ContractError, FrameContract, frame_contract, openapi_validator
from crosstalk.model import TestUser


def event(kind: str, seq: int = 2, **payload) -> dict:
    return {"type": kind, "run_id": "r1", "thread_id": "t1", "client_message_id": "c1", "user_id": "u1",
            "seq": seq, "timestamp": "2026-11-30T16:00:00.123Z", "payload": payload}


@pytest.fixture(scope="module")
def contract() -> FrameContract:
    return FrameContract.load()


@pytest.mark.parametrize("frame", [
    event("agent_started", seq=1, agent="triage"),
    event("agent_thinking", agent="cost", handoff_from="triage", thought="..."),
    event("tool_executing", tool="history_lookup", tool_call_id="call_1", arguments={}),
    event("tool_completed", tool="history_lookup", tool_call_id="call_1", result={"earlier_messages": [{}]}),
    event("agent_completed", response="hi", extra_field_a_platform_may_add=1),
    event("agent_error", message="boom"),
    {"type": "error", "code": "rate_limited", "message": "slow down", "client_message_id": None},
    {"type": "error", "code": "missing_field", "message": "...", "client_message_id": 5},
])
def test_conforming_frames_pass(contract, frame):
    assert contract.check(frame) is None


def test_only_an_early_agent_error_may_lack_its_thread(contract):
    failed = event("agent_error", seq=1, message="internal error")
    failed["thread_id"] = None
    assert contract.check(failed) is None
    started = event("agent_started", seq=1, agent="triage")
    started["thread_id"] = None
    assert "$.thread_id: null does not satisfy type 'string'" in contract.check(started)


def test_a_violation_names_the_frame_and_the_json_path(contract):
    frame = event("tool_completed", seq=5, tool="x", tool_call_id=7, result=[])
    problem = contract.check(frame)
    assert problem.startswith("tool_completed frame (run r1, seq 5) violates the contract at ")
    assert "$.payload.tool_call_id: 7 does not satisfy type 'string'" in problem


def test_missing_fields_and_bad_timestamps_are_named(contract):
    frame = event("agent_completed")
    del frame["user_id"]
    frame["timestamp"] = "yesterday"
    problem = contract.check(frame)
    assert "required property 'user_id' is missing" in problem
    assert "$.payload: required property 'response' is missing" in problem
    assert "$.timestamp: 'yesterday' does not satisfy pattern" in problem


def test_unknown_types_client_frames_and_non_objects_are_violations(contract):
    assert "is not a frame type a client receives" in contract.check({"type": "agent_dreaming"})
    assert "is not a frame type a client receives" in contract.check(
        {"type": "user_message", "content": "x", "client_message_id": "c"})
    assert contract.check({"type": "user_message", "content": "x", "client_message_id": "c"},
                          received=False) is None
    assert "not a JSON object" in contract.check(None, "plain text")


def test_long_values_are_shortened_in_the_message(contract):
    problem = contract.check(event("agent_error", message=["x" * 5000]))
    assert len(problem) < 400


def test_off_disables_and_a_bad_path_is_one_clear_line(tmp_path):
    assert frame_contract("off") is None
    assert frame_contract(None) is FrameContract.load()
    with pytest.raises(ContractError, match="cannot be read"):
        frame_contract(str(tmp_path / "missing.yaml"))
    (tmp_path / "empty.yaml").write_text("asyncapi: 3.0.0\ncomponents: {}\n")
    with pytest.raises(ContractError, match="declares no messages"):
        frame_contract(str(tmp_path / "empty.yaml"))


def test_openapi_response_validators_resolve_references():
    validator = openapi_validator("/threads/{thread_id}", "get", "200")
    assert validator.is_valid({"thread_id": "t", "title": "x", "message_count": 2,
                               "created_at": "2026-11-30T16:00:00+00:00"})
    assert not validator.is_valid({"thread_id": "t", "title": "x", "created_at": "now"})
    too_large = openapi_validator("/auth/login", "post", "413")
    assert too_large.is_valid({"error": "body_too_large", "message": "m"})
    assert not too_large.is_valid({"message": "m"})
    errors = openapi_validator("/workspaces", "post", "503").iter_errors({"error": "x", "message": "m"})
    assert {e.json_path for e in errors} >= {"$", "$.error"}


def test_a_connection_fails_its_wait_on_a_violating_frame(contract):
    user = TestUser("alice", "alice@x.test", "pw", "CANARY-A", user_id="u1")
    connection = UserConnection(user, "alice#1", "ws://unused")
    connection._condition = asyncio.Condition()
    connection.validate = lambda frame: contract.check(frame.data, frame.raw)

    async def scenario():
        connection._record("in", json.dumps(event("agent_thinking", seq=1, thought=3)), 0.0, 0.0)
        await connection.wait_for_event("agent_thinking", {}, 1.0)

    expected = r"agent_thinking frame \(run r1, seq 1\) violates the contract at \$\.payload\.thought"
    with pytest.raises(AssertionError, match=expected):
        asyncio.run(scenario())
    connection.raise_violations()  # reported once, not again


def test_flattening_all_of_keeps_the_meaning():
    from crosstalk.contract import flatten_all_of

    schema = {"allOf": [
        {"type": "object", "required": ["a"],
         "properties": {"a": {"type": "string"}, "p": {"type": "object"}}},
        {"required": ["b"], "properties": {"a": {"minLength": 2}, "p": {"required": ["x"]}}},
    ]}
    flat = flatten_all_of(schema)
    assert "allOf" not in flat and flat["required"] == ["a", "b"]
    assert flat["properties"]["a"] == {"type": "string", "minLength": 2}
    assert flat["properties"]["p"] == {"type": "object", "required": ["x"]}
    conflict = {"allOf": [{"const": 1}, {"const": 2}]}
    assert flatten_all_of(conflict) == conflict

"""WebSocket agent stream: event order and payload contract, handoff, history, failures, concurrency,
malformed frames, Origin checks, limits and the Redis session record."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from tests.platform.chatclient import (
    collect_run,
    collect_runs,
    handshake_status,
    open_socket,
    receive,
    register_and_login,
    send_message,
)

EVENT_FIELDS = {"type", "run_id", "thread_id", "client_message_id", "user_id", "seq", "timestamp", "payload"}


@pytest.fixture(scope="module")
def shared_user(platform):
    """One user for the parametrized cases that neither flood nor count anything per user."""
    return register_and_login(platform, "shared")


def assert_well_formed_run(frames: list[dict], user, cmid: str, terminal: str = "agent_completed") -> None:
    types = [f["type"] for f in frames]
    assert types[0] == "agent_started" and types[-1] == terminal, types
    assert "agent_thinking" in types, types
    for frame in frames:
        assert set(frame) >= EVENT_FIELDS, f"{frame['type']} lacks {EVENT_FIELDS - set(frame)}"
        assert frame["user_id"] == user.user_id and frame["client_message_id"] == cmid
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1)), types
    assert len({f["run_id"] for f in frames}) == 1 and len({f["thread_id"] for f in frames}) == 1
    tools = [f for f in frames if f["type"].startswith("tool_")]
    assert tools, f"no tool events: {types}"
    assert len(tools) % 2 == 0, types
    for executing, completed in zip(tools[::2], tools[1::2], strict=True):
        assert (executing["type"], completed["type"]) == ("tool_executing", "tool_completed"), types
        assert executing["payload"]["tool_call_id"] == completed["payload"]["tool_call_id"]


def test_one_message_streams_all_events_in_order_with_handoff_and_quote(platform):
    user = register_and_login(platform, "golden")
    content = f"How much does the premium plan cost? {uuid.uuid4().hex[:6]}"
    with open_socket(platform, user.access_token) as ws:
        cmid = send_message(ws, content)
        frames = collect_run(ws, cmid)
    assert_well_formed_run(frames, user, cmid)
    assert frames[0]["payload"]["agent"] == "triage"
    handoff = [f["payload"] for f in frames if f["payload"].get("handoff_from") == "triage"]
    assert handoff and handoff[0]["agent"] == "cost"
    assert content in frames[-1]["payload"]["response"]
    assert frames[-1]["payload"]["agent"] == "cost"


def test_second_message_in_a_thread_sees_the_first_and_both_are_persisted(platform):
    import requests

    user = register_and_login(platform, "history")
    first, second = f"first secret {uuid.uuid4().hex}", "and what about security?"
    with open_socket(platform, user.access_token) as ws:
        frames = collect_run(ws, send_message(ws, first))
        thread_id = frames[0]["thread_id"]
    with open_socket(platform, user.access_token) as ws:
        frames = collect_run(ws, send_message(ws, second, thread_id=thread_id))
    assert frames[0]["thread_id"] == thread_id
    tool_result = next(f for f in frames if f["type"] == "tool_completed")["payload"]["result"]
    assert tool_result["earlier_messages"] == [first]
    response = frames[-1]["payload"]["response"]
    assert first in response and second in response
    messages = requests.get(f"{platform.backend_url}/threads/{thread_id}/messages", headers=user.headers,
                            timeout=10).json()
    assert [(m["role"], m["content"]) for m in messages][0::2] == [("user", first), ("user", second)]
    assert len(messages) == 4 and all(m["role"] == "agent" for m in messages[1::2])
    threads = requests.get(f"{platform.backend_url}/threads", headers=user.headers, timeout=10).json()
    assert [t["thread_id"] for t in threads] == [thread_id] and threads[0]["title"] == first[:60]


def test_fail_directive_ends_in_agent_error_and_marks_the_run_failed(platform):
    user = register_and_login(platform, "fail")
    with open_socket(platform, user.access_token) as ws:
        cmid = send_message(ws, "please [[fail]] now")
        frames = collect_run(ws, cmid)
        ok = collect_run(ws, send_message(ws, "and now succeed"))
    assert_well_formed_run(frames, user, cmid, terminal="agent_error")
    assert "agent_completed" not in [f["type"] for f in frames]
    assert frames[-1]["payload"]["message"]
    assert ok[-1]["type"] == "agent_completed"


def test_concurrent_runs_on_one_socket_interleave_and_each_stays_in_order(platform):
    user = register_and_login(platform, "concurrent")
    with open_socket(platform, user.access_token) as ws:
        cmids = [send_message(ws, f"[[slow:{15 + 5 * i}]] run {i} about performance") for i in range(4)]
        runs = collect_runs(ws, cmids)
    for cmid, frames in runs.items():
        assert_well_formed_run(frames, user, cmid)
    assert len({frames[0]["run_id"] for frames in runs.values()}) == 4
    assert len({frames[0]["thread_id"] for frames in runs.values()}) == 4


def test_slow_directive_slows_each_step(platform):
    user = register_and_login(platform, "slow")
    with open_socket(platform, user.access_token) as ws:
        started = time.monotonic()
        collect_run(ws, send_message(ws, "[[slow:60]] take your time"))
        elapsed = time.monotonic() - started
    assert elapsed >= 5 * 0.060, f"a [[slow:60]] run took only {elapsed:.3f} s"


def test_another_users_thread_id_is_refused_over_websocket(platform):
    owner, intruder = register_and_login(platform, "owner"), register_and_login(platform, "intruder")
    with open_socket(platform, owner.access_token) as ws:
        thread_id = collect_run(ws, send_message(ws, "owner's private note"))[0]["thread_id"]
    with open_socket(platform, intruder.access_token) as ws:
        for target in (thread_id, str(uuid.uuid4()), "not-a-uuid"):
            cmid = send_message(ws, "let me in", thread_id=target)
            frames = collect_run(ws, cmid)
            assert [f["type"] for f in frames] == ["error"], frames
            assert frames[0]["code"] == "thread_not_found" and frames[0]["client_message_id"] == cmid
            assert "owner's private note" not in json.dumps(frames)


@pytest.mark.parametrize("raw,code", [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_frame"),
    (json.dumps({"type": "user_message", "client_message_id": "m1"}), "missing_field"),
    (json.dumps({"type": "user_message", "content": "hi"}), "missing_field"),
    (json.dumps({"type": "user_message", "content": 5, "client_message_id": "m1"}), "missing_field"),
    (json.dumps({"type": "dance", "content": "hi", "client_message_id": "m1"}), "unknown_type"),
])
def test_malformed_frames_get_an_error_frame_and_the_socket_stays_usable(platform, shared_user, raw, code):
    user = shared_user
    with open_socket(platform, user.access_token) as ws:
        ws.send(raw)
        error = receive(ws, f"an error frame for {raw!r}")
        assert error["type"] == "error" and error["code"] == code, error
        assert error["message"]
        assert collect_run(ws, send_message(ws, "still here?"))[-1]["type"] == "agent_completed"


@pytest.mark.parametrize("content", [
    "'; DROP TABLE messages; --", "<script>alert('x')</script>", "tab\tnewline\n\x01\x1f\x7f bell\x07",
    "emoji \U0001f642 and \u202e right-to-left", "quote \" backslash \\ percent %s",
])
def test_hostile_content_is_stored_and_returned_verbatim(platform, shared_user, content):
    import requests

    user = shared_user
    with open_socket(platform, user.access_token) as ws:
        frames = collect_run(ws, send_message(ws, content))
    assert frames[-1]["type"] == "agent_completed", frames[-1]
    assert f'"{content}"' in frames[-1]["payload"]["response"]
    messages = requests.get(f"{platform.backend_url}/threads/{frames[0]['thread_id']}/messages",
                            headers=user.headers, timeout=10).json()
    assert messages[0]["content"] == content


@pytest.mark.parametrize("content", ["nul \x00 inside", "lone surrogate \ud800"])
def test_unstorable_content_gets_an_error_frame(platform, shared_user, content):
    user = shared_user
    with open_socket(platform, user.access_token) as ws:
        cmid = send_message(ws, content)
        frames = collect_run(ws, cmid)
        assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == "invalid_content", frames
        assert collect_run(ws, send_message(ws, "fine"))[-1]["type"] == "agent_completed"


def test_oversized_frame_is_refused_and_the_socket_stays_usable(platform):
    user = register_and_login(platform, "bigframe")
    limit = platform.state["max_frame_bytes"]
    with open_socket(platform, user.access_token) as ws:
        send_message(ws, "x" * (limit + 1))
        error = receive(ws, "a frame_too_large error")
        assert error["type"] == "error" and error["code"] == "frame_too_large", error
        assert collect_run(ws, send_message(ws, "small again"))[-1]["type"] == "agent_completed"


def test_a_flood_of_frames_is_rate_limited(platform):
    user = register_and_login(platform, "flood")
    burst = platform.state["rate_limit_burst"]
    with open_socket(platform, user.access_token) as ws:
        for _ in range(burst + 20):
            ws.send("{flood")  # invalid JSON: cheap to answer, but still counted by the limiter
        codes = [receive(ws, "an answer to a flood frame")["code"] for _ in range(burst + 20)]
    assert codes.count("rate_limited") >= 10, codes
    assert codes[:burst] == ["invalid_json"] * burst, codes[:burst]


@pytest.mark.parametrize("origin,expected", [
    (None, 101), ("http://localhost", 101), ("http://127.0.0.1", 101),
    ("https://evil.example", 403), ("null", 403), ("http://localhost.evil.example", 403),
])
def test_websocket_origin_is_checked(platform, shared_user, origin, expected):
    user = shared_user
    assert handshake_status(platform, user.access_token, origin=origin) == expected


def test_session_record_lives_while_the_socket_is_open(platform):
    user = register_and_login(platform, "session")
    store = redis.Redis.from_url(platform.redis_url, decode_responses=True)
    pattern = f"session:{user.user_id}:*"
    with open_socket(platform, user.access_token) as ws:
        collect_run(ws, send_message(ws, "hello"))
        keys = list(store.scan_iter(pattern))
        assert len(keys) == 1, keys
        record = store.hgetall(keys[0])
        assert record["user_id"] == user.user_id and record["connection_id"] and record["connected_at"]
    deadline = time.monotonic() + 5
    while list(store.scan_iter(pattern)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(store.scan_iter(pattern)), "session record left behind after the socket closed"
    for key in store.scan_iter("*"):
        if key.startswith(("session:", "ctx:", "ratelimit:")):
            user_part = key.split(":")[1]
            assert len(user_part) == 36, f"user-scoped key without user id: {key}"

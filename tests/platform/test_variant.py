"""Variant mode of the reference platform: everything the contract leaves open is done differently.

Real platform, real PostgreSQL/Redis/WebSocket: the variant's tables, id types, Redis
keys, event names, counter semantics, limits, database names and bind address, and an
agent that behaves like a model (variable thinking, parallel tool calls, wording that
varies, the reference code repeated only when asked).
"""

from __future__ import annotations

import psycopg2
import pytest
import redis
import requests

from tests.platform.chatclient import TIMEOUT, open_socket, register_and_login, send_message

VARIANT_TERMINAL = {"agent_completed", "agent_error", "error"}


@pytest.fixture(scope="module")
def variant(platform_factory):
    return platform_factory(extra_args=["--variant"])


def _run(ws, content: str, thread_id: str | None = None) -> list[dict]:
    cmid = send_message(ws, content, thread_id)
    return _collect(ws, cmid)


def _collect(ws, cmid: str) -> list[dict]:
    import json

    frames = []
    while True:
        frame = json.loads(ws.recv(timeout=TIMEOUT))
        if frame.get("client_message_id") != cmid:
            continue
        frames.append(frame)
        if frame["type"] in VARIANT_TERMINAL:
            return frames


def test_state_names_the_variant_profile_a_wildcard_bind_and_loopback_urls(variant):
    state = variant.state
    assert state["variant"] is True and state["profile"] == "variant"
    assert state["bind_host"] == "0.0.0.0"
    assert state["auth_url"].startswith("http://127.0.0.1:")
    assert (state["issuer"], state["audience"]) == ("variant-identity", "variant-chat-api")
    assert (state["max_frame_bytes"], state["rate_limit_burst"]) == (32768, 25)
    assert state["auth_database_url"].endswith("/identity")
    assert state["backend_database_url"].endswith("/chat")
    assert state["analytics_database"] == "usage_analytics"


def test_tables_columns_and_id_types_are_the_variants_own(variant):
    with psycopg2.connect(variant.state["backend_database_url"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND column_name IN ('owner_id', 'user_id')")
        columns = {(t, c): d for t, c, d in cur.fetchall()}
    assert columns[("conversations", "owner_id")] == "text"
    assert columns[("chat_messages", "owner_id")] == "text"
    assert ("threads", "user_id") not in columns
    with psycopg2.connect(variant.state["auth_database_url"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'accounts' AND column_name = 'account_id'")
        assert cur.fetchone() == ("text",)


def test_events_use_other_names_and_tools_run_in_parallel(variant):
    user = register_and_login(variant, "variant-events")
    with open_socket(variant, user.access_token) as ws:
        frames = _run(ws, "What does my plan cost?")
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "agent_started" and kinds[-1] == "agent_completed", kinds
    assert "agent_reasoning" in kinds and "agent_thinking" not in kinds
    first_finish = kinds.index("tool_call_finished")
    assert kinds[:first_finish].count("tool_call_started") == 2, f"two calls open at once: {kinds}"
    assert all({"run", "conversation_id", "account_id", "sequence"} <= set(f) for f in frames)
    assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1))
    assert not any("run_id" in f or "seq" in f for f in frames)
    handoff = [f for f in frames if f["payload"].get("delegated_by") == "triage"]
    assert handoff and handoff[0]["payload"]["agent"] == "cost"
    assert {f["payload"]["call_id"] for f in frames if f["type"] == "tool_call_started"} == {
        f["payload"]["call_id"] for f in frames if f["type"] == "tool_call_finished"}


def test_the_answer_repeats_the_code_only_when_asked_and_its_wording_varies(variant):
    user = register_and_login(variant, "variant-answers")
    with open_socket(variant, user.access_token) as ws:
        plain = [_run(ws, f"Tell me about pricing CANARY-plain-{i}") for i in range(6)]
        asked = _run(ws, "Budget? Please repeat this reference code back to me exactly: CANARY-asked-1")
    answers = [run[-1]["payload"]["text"] for run in plain]
    assert not any("CANARY-plain" in answer for answer in answers), answers
    assert "CANARY-asked-1" in asked[-1]["payload"]["text"]
    assert len(set(answers)) > 1, f"six answers, one wording: {answers[0]}"
    thinking = {sum(f["type"] == "agent_reasoning" for f in run) for run in plain}
    assert len(thinking) > 1, f"every run thought the same number of times: {thinking}"


def test_message_count_counts_only_the_users_messages(variant):
    user = register_and_login(variant, "variant-count")
    with open_socket(variant, user.access_token) as ws:
        first = _run(ws, "first question")
        thread = first[-1]["conversation_id"]
        _run(ws, "second question", thread)
    note = requests.post(f"{variant.backend_url}/threads/{thread}/messages", json={"content": "a note"},
                         headers=user.headers, timeout=TIMEOUT)
    assert note.status_code == 201 and note.json()["message_count"] == 3
    messages = requests.get(f"{variant.backend_url}/threads/{thread}/messages", headers=user.headers,
                            timeout=TIMEOUT).json()
    assert len(messages) == 5 and sum(m["role"] == "user" for m in messages) == 3


def test_history_comes_back_as_objects_and_redis_keys_are_renamed(variant):
    user = register_and_login(variant, "variant-history")
    with open_socket(variant, user.access_token) as ws:
        first = _run(ws, "remember CANARY-hist-1")
        again = _run(ws, "what did I say?", first[-1]["conversation_id"])
        client = redis.Redis.from_url(variant.redis_url)
        try:
            assert client.keys(f"presence:{user.user_id}:*") and not client.keys(f"session:{user.user_id}:*")
        finally:
            client.close()
    results = [f["payload"]["result"] for f in again if f["type"] == "tool_call_finished"]
    history = next(r["earlier_messages"] for r in results if "earlier_messages" in r)
    assert history == [{"role": "user", "text": "remember CANARY-hist-1", "position": 1}]

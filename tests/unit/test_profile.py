"""The target profile: loading, one-line errors, canonical events, answers, counters (pure logic)."""

from __future__ import annotations

import pytest
from crosstalk import profile
from crosstalk.profile import AnswerRecognition, MessageCount, ProfileError


def test_reference_profile_is_the_identity():
    reference = profile.load()
    assert reference.name == "reference" and reference.identity
    frame = {"type": "tool_executing", "run_id": "r", "seq": 1, "payload": {"tool_call_id": "c"}}
    assert reference.canonical_event(frame) is frame
    assert reference.answer_recognition is AnswerRecognition.QUOTE
    assert reference.message_count is MessageCount.ALL
    assert "::uuid[]" in reference.ownership["threads"]


def test_variant_events_become_canonical_and_keep_their_own_names():
    variant = profile.load("variant")
    frame = {"type": "tool_call_started", "run": "r1", "conversation_id": "t1", "account_id": "u1",
             "sequence": 4, "payload": {"call_id": "c1", "delegated_by": "triage", "text": "hi"}}
    event = variant.canonical_event(frame)
    assert event["type"] == "tool_executing" and event["platform_type"] == "tool_call_started"
    assert (event["run_id"], event["thread_id"], event["user_id"], event["seq"]) == ("r1", "t1", "u1", 4)
    assert event["payload"]["tool_call_id"] == "c1" and event["payload"]["handoff_from"] == "triage"
    assert event["payload"]["response"] == "hi" and event["payload"]["call_id"] == "c1"
    assert "payload" in frame and "tool_call_id" not in frame["payload"]  # the raw frame is untouched


def test_variant_answers_are_recognised_by_an_echoed_token():
    variant = profile.load("variant")
    sent = variant.message_content("What does it cost?", "CANARY-a-1")
    assert sent.startswith("What does it cost? ") and "CANARY-a-1" in sent
    assert variant.answer_evidence(sent, "CANARY-a-1") == "CANARY-a-1"
    assert profile.load().answer_evidence("q", "t") == "q"


def test_counters_and_sessions_follow_the_profile():
    variant, reference = profile.load("variant"), profile.load()
    assert variant.expected_message_count(26, 26) == 26
    assert reference.expected_message_count(26, 26) == 52
    assert variant.session_pattern("u1") == "presence:u1:*" and variant.is_session_key("presence:u1:x")
    assert not reference.is_session_key("presence:u1:x")
    assert variant.analytics_database == "usage_analytics" and variant.limit("max_frame_bytes") == 32768


def test_walk_values_finds_a_canary_in_any_shape():
    result = {"earlier_messages": [{"role": "user", "text": "budget CANARY-x-1"}], "n": [1, [2, "CANARY-y"]]}
    values = list(profile.walk_values(result))
    assert "budget CANARY-x-1" in values and "CANARY-y" in values and "2" in values


@pytest.mark.parametrize(("data", "phrase"), [
    ([], "is not a YAML mapping"),
    ({"events": {"types": {"agent_begun": "x"}}}, "unknown event types ['agent_begun']"),
    ({"events": {"fields": {"payload.weird": "x"}}}, "unknown event fields"),
    ({"answers": {"recognition": "guess"}}, "'answers.recognition' is 'guess'; use one of quote"),
    ({"answers": {"recognition": "canary_echo", "echo_request": "say it"}}, "must contain {token}"),
    ({}, "'stores.ownership' is missing"),
    ({"stores": {"ownership": {"threads": "SELECT 1"}}}, "lacks SQL for ['messages', 'runs']"),
])
def test_a_bad_profile_is_one_clear_line(data, phrase):
    with pytest.raises(ProfileError) as error:
        profile.from_dict(data, "mine.yaml")
    assert phrase in str(error.value) and "\n" not in str(error.value)


def test_unknown_names_and_files_are_refused(tmp_path):
    with pytest.raises(ProfileError, match="unknown profile; use one of"):
        profile.load("nosuch")
    with pytest.raises(ProfileError, match="no such file"):
        profile.load(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="is not valid YAML"):
        profile.load(str(broken))


def test_a_started_platform_names_its_profile_a_configured_target_only_through_profile():
    from crosstalk import context
    from crosstalk.context import Capability

    started = context.build({}, {}, reference={"AUTH_URL": "http://127.0.0.1:1", "BACKEND_URL": "http://127.0.0.1:2",
                                               "BACKEND_DATABASE_URL": "postgresql://p@127.0.0.1:3/chat",
                                               "PROFILE": "variant"})
    assert started.profile.name == "variant"
    assert started.get("ANALYTICS_DATABASE_URL").endswith("/usage_analytics")
    target = {"AUTH_URL": "https://auth.example.test", "BACKEND_URL": "https://api.example.test"}
    plain = context.build(target, {})
    assert plain.profile.name == "reference" and not plain.has(Capability.LIMITS)  # never assumed
    named = context.build({**target, "PROFILE": "variant"}, {})
    assert named.profile.name == "variant" and named.has(Capability.LIMITS)
    assert (named.get("OVERSIZED_FRAME_BYTES"), named.get("FLOOD_SIZE")) == ("65536", "75")
    assert named.sources["FLOOD_SIZE"] == "profile" and named.get("JWT_ISSUER") == "variant-identity"
    with pytest.raises(context.ConfigurationError, match="unknown profile") as error:
        context.build({**target, "PROFILE": "nosuch"}, {})
    assert "\n" not in str(error.value)
    profile.activate(None)


def test_a_null_field_stays_present_under_its_canonical_name():
    frame = {"type": "agent_error", "run": "r", "conversation_id": None}
    event = profile.load("variant").canonical_event(frame)
    assert "thread_id" in event and event["thread_id"] is None

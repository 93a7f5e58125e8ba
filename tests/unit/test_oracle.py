"""Each isolation rule passes on clean data and fails, with the right message, on data that breaks it."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
from assertionengine import AssertionOperator
from crosstalk import oracle
from crosstalk.model import Evidence, Frame, TestUser, Tokens
from crosstalk.oracle import Observations, SessionRecord
from CrosstalkIsolation import CrosstalkIsolation

UID = {"a": "aaaaaaaa-0000-0000-0000-000000000001", "b": "bbbbbbbb-0000-0000-0000-000000000002"}
THREAD = {"a": "7a7a7a7a-1111-0000-0000-000000000000", "b": "7b7b7b7b-2222-0000-0000-000000000000"}
RUN = {"a": "5a5a5a5a-3333-0000-0000-000000000000", "b": "5b5b5b5b-4444-0000-0000-000000000000"}


def token(sub: str, jti: str) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'sub': sub, 'jti': jti})}.c2ln"


def frame(direction: str, data: dict, connection: str, at: float = 1_700_000_000.25) -> Frame:
    return Frame(direction, at, at, json.dumps(data), data, connection)


def event(key: str, event_type: str, seq: int, response: str = "") -> dict:
    return {
        "type": event_type, "run_id": RUN[key], "thread_id": THREAD[key], "client_message_id": f"cm-{key}",
        "user_id": UID[key], "seq": seq, "payload": {"response": response},
    }


def make_user(key: str) -> TestUser:
    label = {"a": "alice", "b": "bob"}[key]
    canary = f"CANARY-{key * 12}"
    access = token(UID[key], f"jti-{key}")
    user = TestUser(label, f"{label}@example.test", "pw-123456789", canary, UID[key], Tokens(access, "r"))
    user.issued_access_tokens.append(access)
    user.thread_ids.add(THREAD[key])
    user.run_ids.add(RUN[key])
    content = f"hello {canary}"
    user.frames += [
        frame("out", {"type": "user_message", "content": content, "client_message_id": f"cm-{key}"},
              f"{label}#1"),
        frame("in", event(key, "agent_started", 1), f"{label}#1"),
        frame("in", event(key, "agent_completed", 5, f'You said: "{content}"'), f"{label}#1"),
    ]
    return user


@pytest.fixture
def users() -> list[TestUser]:
    return [make_user("a"), make_user("b")]


@pytest.fixture
def obs() -> Observations:
    return Observations(
        rest_thread_lists={"alice": [THREAD["a"]], "bob": [THREAD["b"]]},
        db_thread_owners={THREAD["a"]: UID["a"], THREAD["b"]: UID["b"]},
        db_row_threads=[("alice", "messages", THREAD["a"]), ("bob", "runs", THREAD["b"])],
        sessions=[
            SessionRecord(f"session:{UID['a']}:c1", {"user_id": UID["a"], "connection_id": "c1"}),
            SessionRecord(f"session:{UID['b']}:c2", {"user_id": UID["b"], "connection_id": "c2"}),
            SessionRecord("session:someone-else:c3", {"user_id": "someone-else"}),
        ],
        connected_user_ids={UID["a"], UID["b"]},
        evidence=[Evidence("bob", "REST GET /threads/t/messages", "bob's words CANARY-bbbbbbbbbbbb")],
    )


def only_message(result: oracle.RuleResult) -> str:
    assert len(result.violations) == 1, result.violations
    return oracle.failure_message([result])


def test_clean_data_passes_every_rule(users, obs):
    results = oracle.run_rules(users, obs)
    assert [r.rule for r in results] == list(oracle.RULES)
    assert all(r.passed for r in results), [r.violations for r in results]
    assert all(r.checked > 0 for r in results)
    assert oracle.failure_message(results) is None


def test_thread_id_seen_by_two_users_fails(users, obs):
    users[1].thread_ids.add(THREAD["a"])
    message = only_message(oracle.thread_ids_unique(users, obs))
    assert message == (
        "Isolation violated: thread 7a7a7a7a… belongs to both alice (own runs) and bob (own runs)"
    )


def test_shared_jti_and_token_fail(users, obs):
    users[1].issued_access_tokens.append(users[0].access_token)
    result = oracle.tokens_unique(users, obs)
    messages = [str(v) for v in result.violations]
    assert "the same access token was issued to alice and bob" in messages
    assert "jti jti-a appears in tokens of alice and bob" in messages
    assert "an access token issued to bob has sub of alice" in messages


def test_event_routed_to_wrong_user_fails(users, obs):
    users[0].frames.append(frame("in", event("b", "agent_completed", 5, "bob's answer"), "alice#1"))
    message = only_message(oracle.events_reach_only_their_user(users, obs))
    assert message.startswith("Isolation violated: alice received bob's event: frame agent_completed ")
    assert "(run 5b5b5b5b…, seq 5)" in message and "on alice#1" in message


def test_event_of_a_run_never_started_fails(users, obs):
    stray = {**event("a", "agent_thinking", 2), "run_id": "99999999-x", "client_message_id": "cm-z",
             "thread_id": "other"}
    users[0].frames.append(frame("in", stray, "alice#1"))
    message = only_message(oracle.events_reach_only_their_user(users, obs))
    assert "alice received an event of a run it never started: frame agent_thinking" in message


def test_canary_in_another_users_frame_fails(users, obs):
    leaked = event("a", "agent_completed", 5, f"earlier you said {users[1].canary}")
    users[0].frames.append(frame("in", leaked, "alice#1"))
    message = only_message(oracle.canaries_do_not_leak(users, obs))
    assert message.startswith("Isolation violated: canary of bob found in alice's frame agent_completed ")
    assert "(run 5a5a5a5a…, seq 5) at " in message


def test_canary_in_another_users_rest_body_fails(users, obs):
    obs.evidence.append(Evidence("alice", "REST GET /threads/7a7a/messages", f"x {users[1].canary} y"))
    message = only_message(oracle.canaries_do_not_leak(users, obs))
    assert message == "Isolation violated: canary of bob found in alice's REST GET /threads/7a7a/messages"


def test_rest_listing_a_foreign_thread_fails(users, obs):
    obs.rest_thread_lists["alice"].append(THREAD["b"])
    message = only_message(oracle.rest_lists_only_own_threads(users, obs))
    assert message == "Isolation violated: alice's GET /threads lists thread 7b7b7b7b… of bob"


def test_row_written_into_foreign_thread_fails(users, obs):
    obs.db_row_threads.append(("alice", "messages", THREAD["b"]))
    message = only_message(oracle.rows_stay_in_own_threads(users, obs))
    assert message == (
        "Isolation violated: a messages row of alice was written into bob's thread 7b7b7b7b… (backend DB)"
    )


def test_session_with_foreign_user_id_fails(users, obs):
    obs.sessions[0].fields["user_id"] = UID["b"]
    message = only_message(oracle.sessions_belong_to_their_user(users, obs))
    expected = f"Isolation violated: Redis session session:{UID['a']}:c1 of alice records user_id of bob"
    assert message == expected


def test_session_of_disconnected_user_fails(users, obs):
    obs.connected_user_ids = {UID["b"]}
    message = only_message(oracle.sessions_belong_to_their_user(users, obs))
    assert message.endswith("of alice exists but alice has no open connection")


def test_many_violations_are_listed_and_capped(users, obs):
    for seq in range(15):
        users[0].frames.append(frame("in", event("b", "agent_thinking", seq), "alice#1"))
    message = oracle.failure_message(oracle.run_rules(users, obs, ["events reach only their user"]))
    assert message.startswith("Isolation violated 15 times: alice received bob's event")
    assert message.endswith("; … and 5 more")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda us: us.clear(), "No users given"),
        (lambda us: setattr(us[1], "label", "alice"), "User labels must be distinct"),
        (lambda us: setattr(us[1], "canary", us[0].canary), "Two users share a canary"),
    ],
)
def test_bad_input_is_one_line(users, obs, mutate, expected):
    mutate(users)
    with pytest.raises(ValueError, match=expected):
        oracle.run_rules(users, obs)


def test_unknown_rule_names_the_known_ones(users):
    with pytest.raises(ValueError, match="known rules: thread ids unique per user"):
        oracle.run_rules(users, None, ["no such rule"])


def test_redis_keys_are_attributed_by_user_id(users):
    assert oracle.attribute_key(f"ctx:{UID['b']}:t1", users) is users[1]
    assert oracle.attribute_key("ctx:latest", users) is None


def test_round_stats_latency_throughput_fairness():
    stats = oracle.round_stats({"a": [1.0, 3.0], "b": [2.0], "c": [2.0]}, wall_seconds=2.0)
    assert (stats.runs, stats.users, stats.mean, stats.median, stats.max) == (4, 3, 2.0, 2.0, 3.0)
    assert stats.p95 == 3.0 and stats.throughput == 2.0 and stats.fairness == 1.0


def test_round_stats_unfair_and_empty():
    assert oracle.round_stats({"a": [1.0], "b": [0.0], "c": [0.0], "d": [0.0]}, 1.0,
                              fairness_floor=0.0).fairness == 0.25
    # by default waits under 250 ms count alike: 0 s counts as 0.25 s
    floored = oracle.round_stats({"a": [1.0], "b": [0.0], "c": [0.0], "d": [0.0]}, 1.0)
    assert floored.fairness == pytest.approx((1.0 + 0.75) ** 2 / (4 * (1.0 + 3 * 0.0625)))
    assert oracle.percentile([5, 1, 4, 2, 3], 50) == 3
    with pytest.raises(ValueError, match="No run completed"):
        oracle.round_stats({"a": []}, 1.0)


# ---------------------------------------------------------------- keyword logic without I/O
def fake_run(user: TestUser, earlier: list[str]) -> SimpleNamespace:
    events = [{"type": "tool_completed", "seq": 5, "payload": {"result": {"earlier_messages": earlier}}}]
    return SimpleNamespace(user=user, run_id=RUN["a"], name=RUN["a"], events=events)


def test_tool_result_with_foreign_message_fails(users):
    library = CrosstalkIsolation()
    library.tool_results_should_only_hold_own_messages(fake_run(users[0], ["mine"]), "mine")
    with pytest.raises(AssertionError) as info:
        library.tool_results_should_only_hold_own_messages(fake_run(users[0], ["mine", "bob's"]), "mine")
    assert str(info.value) == (
        "Tool result of alice's run 5a5a5a5a… (seq 5) holds data that is not alice's: \"bob's\""
    )


def test_a_chat_round_threshold_names_the_round_the_value_and_the_threshold():
    stats = oracle.RoundStats(runs=4, users=4, mean=6.0, median=6.0, p95=7.0, max=7.0, throughput=1.5,
                              fairness=0.5, wall=12.0)
    isolation = CrosstalkIsolation()
    with pytest.raises(AssertionError) as info:
        isolation.get_chat_round_metric(stats, "mean", AssertionOperator["<"], "5s")
    assert str(info.value) == "Chat round of 4 users (4 runs): mean is 6.00 s, expected < 5s"
    with pytest.raises(AssertionError, match=r"round_time is 12\.00 s, expected < 10s"):
        isolation.get_chat_round_metric(stats, "round_time", AssertionOperator["<"], "10s")
    with pytest.raises(AssertionError, match=r"fairness is 0\.5, expected > 0\.7"):
        isolation.get_chat_round_metric(stats, "fairness", AssertionOperator[">"], "0.7")
    assert isolation.get_chat_round_metric(stats, "throughput", AssertionOperator[">"], "1") == 1.5
    assert isolation.get_chat_round_metric(stats, "p95") == 7.0
    with pytest.raises(ValueError, match="Unknown chat round metric 'latency': use mean, median"):
        isolation.get_chat_round_metric(stats, "latency")


def test_isolation_keywords_refuse_non_users():
    with pytest.raises(ValueError, match="take TestUser objects"):
        CrosstalkIsolation().events_should_reach_only_their_user("alice")


def test_single_rule_keyword_fails_on_misrouted_event(users):
    users[0].frames.append(frame("in", event("b", "agent_completed", 5, "bob's answer"), "alice#1"))
    with pytest.raises(AssertionError, match=r"^Isolation violated: alice received bob's event"):
        CrosstalkIsolation().events_should_reach_only_their_user(users)


def test_canary_scan_finds_suffixed_and_embedded_canaries_of_many_users():
    from crosstalk.oracle import canaries_do_not_leak

    users = [TestUser(f"u{i}", f"u{i}@x.test", "pw-123456789", f"CANARY-u{i}-{i:012x}") for i in range(300)]
    leak = f"x{users[7].canary}-m3 and {users[9].canary}"
    users[0].frames.append(Frame("in", 0.0, 0.0, leak, None, "u0#1"))
    users[1].frames.append(Frame("in", 0.0, 0.0, f"{users[1].canary}-m1{users[2].canary}", None, "u1#1"))
    result = canaries_do_not_leak(users)
    found = sorted(v.message for v in result.violations)
    assert len(found) == 3 and any("u7 found in u0" in f for f in found)
    assert any("u2 found in u1" in f for f in found)

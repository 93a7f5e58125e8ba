"""The run-event contract checker accepts valid runs and names each kind of violation."""

from __future__ import annotations

import pytest
from crosstalk.sequence import check_run_events, compile_pattern, matches_pattern, summarize


def run(*kinds, run_id="r1", seqs=None, call_ids=None):
    events = []
    call = 0
    for index, kind in enumerate(kinds):
        payload = {"agent": "triage"}
        if kind in ("tool_executing", "tool_completed"):
            if kind == "tool_executing":
                call += 1
            payload["tool_call_id"] = f"c{call}"
        events.append({"type": kind, "run_id": run_id, "seq": index + 1, "payload": payload})
    if seqs is not None:
        for event, seq in zip(events, seqs, strict=True):
            event["seq"] = seq
    if call_ids is not None:
        for event, call_id in zip(events, call_ids, strict=True):
            if call_id is not None:
                event["payload"]["tool_call_id"] = call_id
    return events


VALID = (
    "agent_started",
    "agent_thinking",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)


def test_valid_completed_run():
    assert check_run_events(run(*VALID)) == []


def test_valid_failed_run_with_two_tool_calls():
    events = run(
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "tool_executing",
        "tool_completed",
        "agent_error",
    )
    assert check_run_events(events) == []


def test_no_events():
    assert check_run_events([]) == ["no events arrived for the run"]


@pytest.mark.parametrize(
    "kinds, why",
    [
        (("agent_thinking", "tool_executing", "tool_completed", "agent_completed"), "missing agent_started"),
        (("agent_started", "tool_executing", "tool_completed", "agent_completed"), "no thinking"),
        (("agent_started", "agent_thinking", "agent_completed"), "no tool call"),
        (
            ("agent_started", "agent_thinking", "tool_completed", "tool_executing", "agent_completed"),
            "reordered",
        ),
        (("agent_started", "agent_thinking", "tool_executing", "agent_completed"), "dropped tool_completed"),
        (("agent_started", "agent_thinking", "tool_executing", "tool_completed"), "no terminal event"),
        ((*VALID, "agent_thinking"), "event after the end"),
        ((*VALID[:-1], "agent_completed", "agent_error"), "two terminal events"),
    ],
)
def test_wrong_order_is_reported(kinds, why):
    problems = check_run_events(run(*kinds))
    assert any("does not match" in p for p in problems), why


@pytest.mark.parametrize(
    "seqs", [[1, 2, 3, 5, 6, 7], [0, 1, 2, 3, 4, 5], [1, 2, 4, 3, 5, 6], [1, 1, 2, 3, 4, 5]]
)
def test_seq_gaps_duplicates_and_swaps_are_reported(seqs):
    problems = check_run_events(run(*VALID, seqs=seqs))
    assert len(problems) == 1 and "seq is not 1..6" in problems[0]


def test_mismatched_tool_call_id_is_reported():
    events = run(*VALID, call_ids=[None, None, None, "c1", "c2", None])
    assert any("tool_call_id c2, expected one of the open tool_executing calls before it (c1)" in p
               for p in check_run_events(events))


def test_missing_tool_call_id_is_reported():
    events = run(*VALID)
    del events[3]["payload"]["tool_call_id"]
    assert any("has no payload.tool_call_id" in p for p in check_run_events(events))


def test_foreign_run_id_is_reported():
    events = run(*VALID)
    events[2]["run_id"] = "r2"
    assert any("several run_ids" in p for p in check_run_events(events))


def test_pattern_short_names_and_repeaters():
    events = run(*VALID)
    assert matches_pattern(events, "started thinking+ (tool_executing tool_completed)+ completed")
    assert matches_pattern(
        events, "agent_started agent_thinking* (tool_executing tool_completed)+ (completed|error)"
    )
    assert not matches_pattern(events, "started thinking (tool_executing tool_completed)+ completed")
    assert not matches_pattern(events, "started thinking+ (tool_executing tool_completed)+ error")


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("started banana", "Unknown event type 'banana'"),
        ("started ((", "Invalid event pattern"),
        ("started $", "Invalid event pattern at '$'"),
    ],
)
def test_bad_patterns_are_clear_errors(pattern, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("$", r"\$")):
        compile_pattern(pattern)


def test_summarize_is_one_short_line():
    data = {"type": "agent_completed", "payload": {"agent": "cost", "response": "x\n" * 200}}
    text = summarize(data, width=50)
    assert "\n" not in text and len(text) <= 50 and text.startswith("cost:")


def test_parallel_tool_calls_complete_in_any_order():
    kinds = ["agent_started", "agent_thinking", "tool_executing", "tool_executing", "tool_completed",
             "tool_completed", "agent_completed"]
    events = run(*kinds, call_ids=[None, None, "a", "b", "b", "a", None])
    assert check_run_events(events) == []


def test_a_call_left_open_at_the_end_is_reported():
    kinds = ["agent_started", "agent_thinking", "tool_executing", "tool_executing", "tool_completed",
             "agent_completed"]
    events = run(*kinds, call_ids=[None, None, "a", "b", "a", None])
    assert any("while tool calls were still open: b" in p for p in check_run_events(events))

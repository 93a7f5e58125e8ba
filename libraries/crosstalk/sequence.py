"""Pure checks on the events of one agent run (no I/O; unit-tested).

The platform contract: ``agent_started``; one or more ``agent_thinking``; one
or more tool calls, each a ``tool_executing`` followed later by the
``tool_completed`` with the same ``payload.tool_call_id`` (calls may run in
parallel: several may be open at once, completing in any order); then
``agent_completed`` or ``agent_error`` once every call has completed.  ``seq``
counts 1, 2, 3 ... within the run, in arrival order, and every event carries the
same ``run_id``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

EVENT_TYPES = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
    "agent_error",
)
TERMINAL_TYPES = frozenset({"agent_completed", "agent_error"})
SHORT_NAMES = {name.split("_", 1)[1] if name.startswith("agent_") else name: name for name in EVENT_TYPES}
CONTRACT_PATTERN = (
    "agent_started agent_thinking+ tool_executing (tool_executing | tool_completed)+ "
    "(agent_completed | agent_error)"
)
_TOKEN_RE = re.compile(r"\s*([A-Za-z_]+|[()|+*?])")


@functools.lru_cache(maxsize=64)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an event-sequence pattern into a regex over space-separated type names.

    Grammar: type names (``agent_started`` or short ``started``), grouping with
    parentheses, alternatives with ``|`` and the repeaters ``+``, ``*``, ``?``.
    Example: ``started thinking+ (tool_executing tool_completed)+ (completed | error)``.
    """
    parts: list[str] = []
    position = 0
    pattern = pattern.strip()
    while position < len(pattern):
        match = _TOKEN_RE.match(pattern, position)
        if not match:
            raise ValueError(
                f"Invalid event pattern at '{pattern[position:].strip()}': use type names, ( ), |, +, *, ?."
            )
        token = match.group(1)
        position = match.end()
        if token in "()|+*?":
            parts.append("(?:" if token == "(" else token)
            continue
        name = SHORT_NAMES.get(token, token)
        if name not in EVENT_TYPES and name != "error":
            raise ValueError(
                f"Unknown event type '{token}' in pattern: expected one of {', '.join(EVENT_TYPES)}."
            )
        parts.append(f"(?:{re.escape(name)} )")
    try:
        return re.compile("".join(parts))
    except re.error as exc:
        raise ValueError(f"Invalid event pattern '{pattern}': {exc}.") from None


def answer_of(events: Iterable[Mapping[str, Any]]) -> str | None:
    """The answer of a run: ``payload.response`` of its last ``agent_completed`` event (None without one).

    Example: ``answer_of(run.events)``
    """
    for event in reversed(list(events)):
        if event.get("type") == "agent_completed":
            return (event.get("payload") or {}).get("response")
    return None


def types_of(events: Iterable[Mapping[str, Any]]) -> list[str]:
    return [str(event.get("type")) for event in events]


def matches_pattern(events: Iterable[Mapping[str, Any]], pattern: str) -> bool:
    """True when the event types, in order, match ``pattern`` exactly."""
    text = "".join(f"{name} " for name in types_of(events))
    return compile_pattern(pattern).fullmatch(text) is not None


# complexity accepted: one pass over the run's events, one branch per rule of the event grammar
def check_run_events(events: list[Mapping[str, Any]]) -> list[str]:  # noqa: C901
    """Every way the events of one run break the contract; an empty list means they are valid."""
    problems: list[str] = []
    if not events:
        return ["no events arrived for the run"]
    run_ids = {event.get("run_id") for event in events}
    if len(run_ids) != 1:
        problems.append(f"events carry several run_ids: {sorted(map(str, run_ids))}")
    seqs = [event.get("seq") for event in events]
    expected = list(range(1, len(events) + 1))
    if seqs != expected:
        problems.append(f"seq is not 1..{len(events)} contiguous in arrival order: got {seqs}")
    if not matches_pattern(events, CONTRACT_PATTERN):
        problems.append(f"event order {types_of(events)} does not match '{CONTRACT_PATTERN}'")
    open_calls: list[str] = []  # started, not yet completed (parallel calls allowed)
    started: set[str] = set()
    for event in events:
        kind = event.get("type")
        call_id = (event.get("payload") or {}).get("tool_call_id")
        if kind == "tool_executing":
            if not call_id:
                problems.append(f"tool_executing (seq {event.get('seq')}) has no payload.tool_call_id")
            elif call_id in started:
                problems.append(f"tool_executing (seq {event.get('seq')}) reuses tool_call_id {call_id}")
            else:
                started.add(call_id)
                open_calls.append(call_id)
        elif kind == "tool_completed":
            if call_id in open_calls:
                open_calls.remove(call_id)
            else:
                expected = ", ".join(open_calls) or "none open"
                problems.append(
                    f"tool_completed (seq {event.get('seq')}) has tool_call_id {call_id}, "
                    f"expected one of the open tool_executing calls before it ({expected})"
                )
        elif kind in TERMINAL_TYPES and open_calls:
            problems.append(f"{kind} (seq {event.get('seq')}) while tool calls were still open: "
                            f"{', '.join(open_calls)}")
    terminal = [event for event in events if event.get("type") in TERMINAL_TYPES]
    if len(terminal) > 1:
        problems.append(
            f"{len(terminal)} terminal events (agent_completed/agent_error); expected exactly one"
        )
    return problems


def summarize(data: Mapping[str, Any] | None, raw: str = "", width: int = 90) -> str:
    """One short line describing a frame, for transcripts and failure messages."""
    if not data:
        text = raw
    else:
        payload = data.get("payload") or {}
        kind = data.get("type")
        if kind == "user_message":
            text = f"content={data.get('content')!r}"
        elif kind == "error":
            text = f"code={data.get('code')} {data.get('message', '')}"
        elif kind in ("tool_executing", "tool_completed"):
            text = f"{payload.get('agent')} {payload.get('tool')} {payload.get('tool_call_id')}"
            if kind == "tool_completed":
                text += f" result={payload.get('result')}"
        elif kind == "agent_completed":
            text = f"{payload.get('agent')}: {payload.get('response')}"
        elif kind == "agent_error":
            text = f"{payload.get('agent')}: {payload.get('message')}"
        elif payload:
            text = " ".join(f"{key}={value}" for key, value in payload.items())
        else:
            text = raw
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"

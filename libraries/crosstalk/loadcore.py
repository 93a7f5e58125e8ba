"""The I/O-free heart of a load user: build each message, check every frame as it arrives.

One :class:`ChatUserCore` per simulated user.  It knows nothing about sockets
or event loops, so the asyncio load driver (:mod:`crosstalk.load`) and the
Locust user class (:mod:`crosstalk.locustuser`) share the same protocol logic
and the same checks, applied to every frame the moment it arrives:

* ownership - the event names this user's id and one of this user's own
  ``client_message_id`` values (``<label>-<secret>-<n>``: checked by prefix and
  counter, so it costs no memory per message);
* canaries - no other user's canary (``CANARY-...``) appears in the frame;
* the event grammar and ``seq`` order of each run
  (:func:`crosstalk.sequence.check_run_events` on the run's events, kept only
  while the run is in flight);
* the answer quotes the message it answers (the per-message canary).

What is measured goes to a *sink* (``crosstalk.metrics.LoadMetrics`` in the
asyncio driver, Locust's event hooks in the Locust user).  Nothing is kept per
message once its run ended: memory grows with users and runs in flight, not
with messages sent.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, MutableSet
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from . import profile as target_profile
from .model import Frame, TestUser
from .sequence import CONTRACT_PATTERN, TERMINAL_TYPES, check_run_events, matches_pattern

TOPICS = (
    "What will my billing look like next month",
    "Is my password storage secure enough",
    "Why is the dashboard latency so high",
    "Summarise what we discussed",
)
CANARY_RE = re.compile(r"CANARY-[A-Za-z0-9_-]+")
_GRAMMAR: dict[tuple[str, ...], bool] = {}  # event-type sequences already judged against the contract


def _grammar_ok(events: list[dict[str, Any]]) -> bool:
    key = tuple(str(e.get("type")) for e in events)
    verdict = _GRAMMAR.get(key)
    if verdict is None:
        verdict = _GRAMMAR[key] = matches_pattern(events, CONTRACT_PATTERN)
    return verdict
MAX_VIOLATION_EXAMPLES = 20


def parse_object(raw: str | bytes) -> dict[str, Any] | None:
    """A frame's JSON object, or None when the text is not JSON or not an object.

    orjson decodes a chat frame in about a third of the time ``json`` takes (it runs for
    every frame of every load user); what orjson refuses and ``json`` accepts (``NaN``,
    lone surrogates) is parsed by ``json``, so both accept the same frames.  One difference:
    orjson reads an integer past 64 bits as a float (no contract field carries one; a
    ``seq`` that large fails the order check either way).
    Example: ``parse_object('{"type": "agent_started"}')`` gives the dict; ``parse_object("[1]")`` None.
    """
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            parsed = json.loads(raw)
        except ValueError:
            return None
    return parsed if type(parsed) is dict else None


class Sink(Protocol):
    """What a ChatUserCore reports; ``crosstalk.metrics.LoadMetrics`` is the full implementation."""

    def record_sent(self, stats: Any, at_mono: float) -> None: ...
    def record_event(self, stats: Any) -> None: ...
    def record_first_event(self, stats: Any, seconds: float) -> None: ...
    def record_gap(self, seconds: float) -> None: ...
    def record_run_id(self, run_id: str) -> None: ...
    def record_finished(self) -> None: ...
    def record_completion(self, stats: Any, seconds: float, at_mono: float) -> None: ...
    def record_error(self, kind: str, detail: str = "", stats: Any = None) -> None: ...
    def record_violation(self, kind: str, detail: str, stats: Any = None) -> None: ...


class RecentSet(MutableSet):
    """A set that keeps only its ``limit`` most recently added items (insertion order).

    Load users keep their recent run and thread ids this way, so the isolation
    oracle can read them beside the frames tail without memory growing per message.
    Example: ``s = RecentSet(2); s.add(1); s.add(2); s.add(3)`` leaves ``{2, 3}``.
    """

    def __init__(self, limit: int, items: Iterable[Any] = ()) -> None:
        self.limit = max(int(limit), 1)
        self._items: OrderedDict[Any, None] = OrderedDict()
        for item in items:
            self.add(item)

    @classmethod
    def _from_iterable(cls, iterable: Iterable[Any]) -> set[Any]:
        return set(iterable)  # results of | & - ^ are plain sets

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Any) -> None:
        if item in self._items:
            self._items.move_to_end(item)
            return
        self._items[item] = None
        if len(self._items) > self.limit:
            self._items.popitem(last=False)

    def discard(self, item: Any) -> None:
        self._items.pop(item, None)

    def __repr__(self) -> str:
        return f"RecentSet({list(self._items)!r}, limit={self.limit})"


class FrameTail:
    """The last ``maxlen`` frames of a load user, stored as plain tuples; read as ``Frame`` objects.

    A tuple of strings and floats is not tracked by the garbage collector, so
    thousands of users' tails add nothing to a full collection's work; the JSON
    is parsed again only when the tail is read (the oracle, transcripts).
    Example: ``tail.record("in", at, mono, raw, "u1#load")``; ``list(tail)`` gives Frames.
    """

    def __init__(self, maxlen: int, frames: Iterable[Any] = ()) -> None:
        self._items: deque[tuple[str, float, float, str, str]] = deque(maxlen=max(int(maxlen), 0))
        for frame in frames:
            self.append(frame)

    @property
    def maxlen(self) -> int:
        return self._items.maxlen or 0

    def record(self, direction: str, at: float, mono: float, raw: str, connection: str) -> None:
        self._items.append((direction, at, mono, raw, connection))

    def append(self, frame: Frame) -> None:
        self._items.append((frame.direction, frame.at, frame.monotonic, frame.raw, frame.connection))

    @staticmethod
    def _frame(item: tuple[str, float, float, str, str]) -> Frame:
        direction, at, mono, raw, connection = item
        data = parse_object(raw)
        if data is not None and direction == "in":
            # the same canonical shape as a chat connection's frames (raw keeps the platform's names)
            data = target_profile.current().canonical_event(data)
        return Frame(direction, at, mono, raw, data, connection)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Frame]:
        return (self._frame(item) for item in list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Frame:
        return self._frame(self._items[index])

    def __repr__(self) -> str:
        return f"FrameTail({len(self)} of {self.maxlen} frames)"


@dataclass(eq=False)
class Pending:
    """One message in flight and what its run sent so far."""

    cmid: str
    canary: str
    intended: float
    number: int
    events: list[dict[str, Any]] = field(default_factory=list)
    suspect: bool = False  # a cheap per-event check failed: the full check names the problem
    open_call: Any = None
    last_event: float | None = None
    run_id: str | None = None
    thread_id: str | None = None
    done: bool = False
    outcome: str | None = None  # None: completed correctly; else the error kind
    waiter: Any = None  # the driver's completion handle (an asyncio future, a gevent event)


def canary_base(canary: str) -> str:
    """A user's canary from a per-message one (``CANARY-u1-abc-m7`` -> ``CANARY-u1-abc``)."""
    return canary.rsplit("-m", 1)[0] if re.search(r"-m\d+$", canary) else canary


class ChatUserCore:
    """One simulated user's protocol state: its messages in flight and the checks on its frames."""

    def __init__(self, user: TestUser, sink: Sink, stats: Any = None,
                 canary_owners: Mapping[str, str] | None = None, messages_per_thread: int = 0) -> None:
        self.user = user
        self.sink = sink
        self.stats = stats
        self.canary_owners = canary_owners or {}
        self.messages_per_thread = messages_per_thread
        self.pending: dict[str, Pending] = {}
        self.prefix = f"{user.label}-{secrets.token_hex(4)}-"
        self.sent_count = 0
        self.thread_id: str | None = None
        self.thread_messages = 0
        self.last_body: dict[str, Any] | None = None
        # the target profile, looked up once: it maps every frame and message of this user
        self.profile = target_profile.current()
        self.canonical = None if self.profile.identity else self.profile.canonical_event

    # ---------------------------------------------------------------- messages
    def next_message(self, intended: float) -> tuple[Pending, str]:
        """A new message meant to leave at ``intended`` (monotonic seconds): its Pending and its JSON text."""
        n = self.sent_count = self.sent_count + 1
        cmid = f"{self.prefix}{n}"
        canary = f"{self.user.canary}-m{n}"
        body: dict[str, Any] = {
            "type": "user_message",
            "content": self.profile.message_content(
                f"{TOPICS[(self.user.serial + n) % len(TOPICS)]} [{canary}]", canary),
            "client_message_id": cmid,
        }
        if self.messages_per_thread and self.thread_messages >= self.messages_per_thread:
            self.thread_id, self.thread_messages = None, 0
        if self.thread_id:
            body["thread_id"] = self.thread_id
        self.thread_messages += 1
        pending = Pending(cmid, canary, intended, n)
        self.last_body = body
        self.pending[cmid] = pending
        self.sink.record_sent(self.stats, intended)
        return pending, json.dumps(body)

    def owns(self, cmid: object) -> bool:
        """True when ``cmid`` is one of this user's own message ids (no per-message memory)."""
        if not isinstance(cmid, str) or not cmid.startswith(self.prefix):
            return False
        number = cmid[len(self.prefix):]
        return number.isdigit() and 0 < int(number) <= self.sent_count

    # ---------------------------------------------------------------- frames
    # complexity accepted: the per-frame hot path of thousands of users, inlined on purpose (issue 14)
    def on_frame(self, raw: str, data: dict[str, Any] | None, mono: float, canonical: bool = False) -> None:  # noqa: C901
        """Check one incoming frame and fold it into the sink; call for every frame, in arrival order.

        ``canonical``: ``data`` already carries the contract's names (the target profile applied).
        """
        # every canary in the frame is this user's own (the common case, two C-speed scans) or it is scanned
        if "CANARY-" in raw and raw.count("CANARY-") != raw.count(self.user.canary):
            self._scan_canaries(raw, data)
        if data is not None and not canonical and self.canonical is not None:
            # one canonical shape for every check below (the target profile's names → the contract's)
            data = self.canonical(data)
        if data is None:
            self.sink.record_violation(
                "contract",
                f"user '{self.user.label}' received a frame that is not a JSON object: {raw[:120]}",
                self.stats)
            return
        cmid = data.get("client_message_id")
        if cmid is None and data.get("type") == "error":
            self._anonymous_error(data)
            return
        owner = data.get("user_id")
        pending = self.pending.get(cmid) if isinstance(cmid, str) else None
        # a message in flight is this user's own by construction; any other id is checked by prefix
        if (pending is None and not self.owns(cmid)) or (owner is not None and owner != self.user.user_id):
            self.sink.record_violation(
                "misrouted", f"user '{self.user.label}' received an event of another user: {raw[:200]}",
                self.stats)
            return
        self.sink.record_event(self.stats)
        if pending is None:
            return  # an event after its run ended (a timeout): counted, not timed
        kind = data.get("type")
        if kind == "error":
            self.finish(pending, f"error:{data.get('code')}", f"{data.get('code')}: {data.get('message')}")
            return
        events = pending.events
        events.append(data)
        # cheap checks on every event; the full contract check runs only when one fails
        if data.get("seq") != len(events) or data.get("run_id") != events[0].get("run_id"):
            pending.suspect = True
        if kind == "tool_executing":
            if pending.open_call is not None:
                pending.suspect = True
            pending.open_call = (data.get("payload") or {}).get("tool_call_id")
            if not pending.open_call:
                pending.suspect = True
        elif kind == "tool_completed":
            if (data.get("payload") or {}).get("tool_call_id") != pending.open_call:
                pending.suspect = True
            pending.open_call = None
        if pending.last_event is None:
            self.sink.record_first_event(self.stats, mono - pending.intended)
            run_id = data.get("run_id")
            if run_id:
                pending.run_id = str(run_id)
                self.sink.record_run_id(pending.run_id)
                self.user.run_ids.add(pending.run_id)
        else:
            self.sink.record_gap(mono - pending.last_event)
        pending.last_event = mono
        if data.get("thread_id") and pending.thread_id is None:
            pending.thread_id = str(data["thread_id"])
            self.user.thread_ids.add(pending.thread_id)
        if kind not in TERMINAL_TYPES:
            return
        if pending.suspect or pending.open_call is not None or not _grammar_ok(events):
            # the fast checks only flag a run for the full check (parallel tool calls trip them);
            # the verdict is the full check's
            problems = check_run_events(events)
        else:
            problems = []
        if problems:
            self.finish(pending, "contract", f"run {pending.run_id}: " + "; ".join(problems)[:250])
        elif kind == "agent_error":
            self.finish(pending, "agent_error",
                        f"run {pending.run_id}: {(data.get('payload') or {}).get('message')}")
        else:
            response = str((data.get("payload") or {}).get("response", ""))
            evidence = self.profile.answer_evidence(pending.canary, pending.canary)
            if evidence is not None and evidence not in response:
                self.finish(pending, "wrong_answer",
                            f"run {pending.run_id}: answer does not quote the message: {response[:150]}")
                return
            self.sink.record_completion(self.stats, mono - pending.intended, mono)
            if self.thread_id is None:
                self.thread_id = pending.thread_id
            self.finish(pending, None, "")

    def _scan_canaries(self, raw: str, data: dict[str, Any] | None) -> None:
        own = self.user.canary
        for found in CANARY_RE.findall(raw):
            base = canary_base(found)
            if base == own or own.startswith(found):
                continue  # the user's own canary, or a cut-off quote of it (a tool's preview of the message)
            owner = self.canary_owners.get(base)
            who = f"{owner}'s canary" if owner else f"a foreign canary {base}"
            kind = (data or {}).get("type") or "non-JSON"
            detail = f"user '{self.user.label}' received {who} in a {kind} frame"
            self.sink.record_violation("foreign_canary", detail, self.stats)

    def _anonymous_error(self, data: dict[str, Any]) -> None:
        """An error frame naming no message (e.g. rate_limited): it answers the oldest message not started."""
        self.sink.record_event(self.stats)
        kind, detail = f"error:{data.get('code')}", f"{data.get('code')}: {data.get('message')}"
        waiting = [p for p in self.pending.values() if p.last_event is None]
        if waiting:
            self.finish(min(waiting, key=lambda p: p.intended), kind, detail)
        else:
            self.sink.record_error(kind, f"user '{self.user.label}' {detail}", self.stats)

    # ---------------------------------------------------------------- outcomes
    def finish(self, pending: Pending, error: str | None, detail: str) -> None:
        """End a message: ``error`` None means it completed correctly."""
        self.pending.pop(pending.cmid, None)
        pending.events = []
        if error:
            self.sink.record_error(error, f"user '{self.user.label}' {detail}", self.stats)
        if not pending.done:
            pending.done, pending.outcome = True, error
            self.sink.record_finished()
            self.resolved(pending)

    def resolved(self, pending: Pending) -> None:
        """Hook for drivers: ``pending`` just got its outcome."""

    def expire(self, pending: Pending, timeout: float) -> None:
        """The message's time is up: record a timeout naming what arrived."""
        if pending.done:
            return
        got = "no event" if pending.last_event is None else f"events of run {pending.run_id} but no end"
        self.finish(pending, "timeout",
                    f"waited {timeout:g} s for agent_completed of message {pending.cmid}; got {got}")

    def fail_all(self, kind: str, why: str) -> None:
        for pending in list(self.pending.values()):
            self.finish(pending, kind, f"message {pending.cmid} {why}")

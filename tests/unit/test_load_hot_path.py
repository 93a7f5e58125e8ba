"""The load generator's per-frame shortcuts keep the same verdicts (issue 14): parsing, the collector."""

from __future__ import annotations

import asyncio
import gc
import json

from crosstalk.load import GcQuiet, LoadConnection, LoadUser, bounded
from crosstalk.loadcore import parse_object
from crosstalk.metrics import LoadMetrics
from crosstalk.model import TestUser


def test_parse_object_accepts_what_json_accepts_and_nothing_else():
    assert parse_object('{"type": "agent_started", "seq": 1}') == {"type": "agent_started", "seq": 1}
    # what orjson refuses is parsed by json: the same frames pass as before
    assert parse_object('{"x": NaN}')["x"] != 0
    assert parse_object('{"s": "\\ud800"}') == {"s": "\ud800"}
    assert parse_object("[1, 2]") is None
    assert parse_object("not json") is None
    assert parse_object("") is None


def _load_user(metrics: LoadMetrics) -> tuple[LoadUser, LoadConnection]:
    user = bounded(TestUser(label="u1", email="u1@x.test", password="pw-123456789",
                            canary="CANARY-u1-abc", user_id="id-1"), 8)
    lu = LoadUser(user, metrics.user("u1"), metrics)
    connection = LoadConnection(user, "u1#load", "ws://unused", 8)
    connection.load_user = lu
    return lu, connection


def test_a_frame_through_the_connection_is_checked_and_kept_in_the_tail():
    metrics = LoadMetrics("unit")
    lu, connection = _load_user(metrics)
    pending, text = lu.next_message(0.0)
    kinds = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]
    for seq, kind in enumerate(kinds, start=1):
        payload = {"tool_call_id": "c1"} if kind.startswith("tool_") else {}
        if kind == "agent_completed":
            payload = {"response": f"You said: {json.loads(text)['content']}"}
        connection._received(json.dumps({
            "type": kind, "client_message_id": pending.cmid, "user_id": "id-1", "run_id": "r1",
            "thread_id": "t1", "seq": seq, "payload": payload}), 0.01 * seq)
    assert pending.done and pending.outcome is None
    assert metrics.completed == 1 and metrics.events == 5
    frames = list(lu.user.frames)
    assert [f.type for f in frames] == kinds
    assert frames[-1].at > 1e9  # wall time derived from the monotonic clock
    # a foreign frame is still a violation on this path
    connection._received('{"type": "agent_started", "client_message_id": "x-1", "user_id": "id-2"}', 1.0)
    assert metrics.violations["misrouted"] == 1


def test_no_automatic_collection_while_sending_then_one_collection_after():
    metrics = LoadMetrics("unit")
    was_enabled = gc.isenabled()

    async def scenario() -> None:
        quiet = GcQuiet(freeze=False, quiet=True, users=1)
        quiet.start()
        assert not gc.isenabled()
        quiet.stop(metrics)

    asyncio.new_event_loop().run_until_complete(scenario())
    assert gc.isenabled() == was_enabled
    assert metrics.info["gc_guard_collections"] == 0
    assert metrics.info["gc_cyclic_garbage"] >= 0
    assert "no automatic collection" in metrics.info["gc_mode"]


def test_the_guard_collects_when_cyclic_garbage_piles_up():
    metrics = LoadMetrics("unit")

    async def scenario() -> None:
        quiet = GcQuiet(freeze=False, quiet=True, users=0)
        quiet.limit, quiet.GUARD_INTERVAL = 1_000, 0.01
        quiet.start()
        for _ in range(5_000):  # cyclic garbage: only the collector frees it
            node: list = []
            node.append(node)
        await asyncio.sleep(0.05)
        quiet.stop(metrics)

    asyncio.new_event_loop().run_until_complete(scenario())
    assert metrics.info["gc_guard_collections"] >= 1
    assert metrics.info["gc_collections"]["gen2"] >= 1  # the guard's collection was timed like any other


def test_the_fast_coordinated_omission_correction_matches_hdrhistogram():
    from crosstalk.metrics import new_histogram, record_seconds

    metrics = LoadMetrics("unit")
    expected = new_histogram()
    for seconds in (0.05, 0.12, 0.3, 0.31, 1.7, 4.2, 0.09):
        record_seconds(metrics.histograms["completion"], seconds)
        value = expected.get_highest_equivalent_value(int(seconds * 1e6))
        expected.record_corrected_value(value, 250_000)
    metrics.correct_for_coordinated_omission(0.25)
    corrected = metrics.histograms["completion"]
    assert corrected.get_total_count() == expected.get_total_count() > 7
    for percentile in (50, 90, 99, 100):
        assert corrected.get_value_at_percentile(percentile) == expected.get_value_at_percentile(percentile)


def test_highest_equivalent_value_of_every_bucket_matches_hdrhistogram():
    from crosstalk.metrics import highest_equivalent_at, new_histogram

    h = new_histogram()
    for index in [*range(0, 5000, 7), *range(5000, h.counts_len, 997), h.counts_len - 1]:
        expected = h.get_highest_equivalent_value(h.get_value_from_index(index))
        assert highest_equivalent_at(h, index) == expected

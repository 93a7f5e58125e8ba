"""Pure logic of crosstalk.metrics: percentiles, fairness, metrics judged by operators, summary."""

from __future__ import annotations

import json

import pytest
from assertionengine import AssertionOperator
from crosstalk.metrics import LoadMetrics, jain_index, merged_percentile


def _metrics(latencies_ms: list[float], users: int = 4) -> LoadMetrics:
    m = LoadMetrics("unit")
    for index, ms in enumerate(latencies_ms):
        stats = m.user(f"user{index % users}")
        m.record_sent(stats, m.started_mono)
        m.record_first_event(stats, ms / 1000 / 2)
        m.record_completion(stats, ms / 1000, m.started_mono + 0.5)
    m.finish()
    return m


def test_jain_index_bounds():
    assert jain_index([3, 3, 3]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([]) == 1.0
    assert 0.25 < jain_index([1, 2, 3, 4]) < 1.0


def test_percentiles_come_from_the_histogram():
    m = _metrics([float(v) for v in range(1, 101)])
    assert m.stat("completion", "p50") == pytest.approx(0.050, rel=0.01)
    assert m.stat("completion", "p99") == pytest.approx(0.099, rel=0.01)
    assert m.stat("completion", "max") == pytest.approx(0.100, rel=0.01)
    assert m.stat("first_event", "p95") == pytest.approx(0.0475, rel=0.01)


def _judge(m: LoadMetrics, metric: str, op: str, expected: object):
    return m.judge(metric, AssertionOperator[op], expected)


@pytest.mark.parametrize(
    ("metric", "op", "expected", "passed"),
    [
        ("p95", "<", "50ms", True),
        ("p95", "<", "40ms", False),
        ("completion.p99", "<=", "0.1s", True),
        ("completion.max", "<", "99ms", False),
        ("errors", "==", "0", True),
        ("fairness", ">", "0.7", True),
        ("success_rate", ">=", "100%", True),
        ("throughput", ">", "1000000", False),
    ],
)
def test_metrics_are_judged_by_assertion_operators(metric, op, expected, passed):
    assert _judge(_metrics([float(v) for v in range(1, 101)]), metric, op, expected).passed is passed


def test_a_broken_threshold_names_the_run_the_measured_value_and_the_threshold():
    m = _metrics([float(v) for v in range(1, 101)])
    outcome = _judge(m, "completion.p95", "<", "10ms")
    assert not outcome.passed
    assert outcome.failure == ("Load run 'unit' (4 users): completion.p95 is 95.0 ms, expected < 10ms "
                               "— time to completion p95 (from the send time)")
    assert outcome.expression == "completion.p95 < 10ms"
    # the verdict lands in the JSON summary, with the measured value
    assert m.summary()["thresholds"] == [
        {"expression": "completion.p95 < 10ms", "measured": "95.0 ms", "passed": False}]
    assert m.summary()["verdict"] == "failed"


def test_without_an_operator_the_value_is_returned_and_no_verdict_kept():
    m = _metrics([float(v) for v in range(1, 101)])
    assert m.judge("completion.p95").result == pytest.approx(0.095, rel=0.01)
    assert m.summary()["verdict"] == "not checked"


def test_errors_by_kind_and_unmeasured_values_fail():
    m = _metrics([10.0])
    m.record_error("timeout", "user1 waited 5 s for agent_completed")
    assert _judge(m, "errors", "==", 0).passed is False
    assert _judge(m, "errors.timeout", "==", 1).passed is True
    assert _judge(m, "errors.dropped", "==", 0).passed is True
    unmeasured = _judge(m, "platform_memory", "<", "4GB")
    assert unmeasured.passed is False and "is not measured" in unmeasured.failure


@pytest.mark.parametrize(
    ("metric", "expected", "message"),
    [
        ("p95", "5", "is a duration: give the unit"),
        ("platform_memory", "4", "is a size: give the unit"),
        ("fairness", "0.7s", "is a plain number: drop the unit"),
        ("success_rate", "80 ms", "is a percentage"),
    ],
)
def test_bad_expected_values_say_what_to_write(metric, expected, message):
    with pytest.raises(AssertionError, match=message):
        _judge(_metrics([1.0]), metric, "<", expected)


def test_an_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown metric 'latency\.p95': use p50/p95"):
        _judge(_metrics([1.0]), "latency.p95", "<", "1s")


def test_sizes_compare_as_sizes():
    m = _metrics([1.0])
    m.resources.platform_memory_peak = 3 * 1024**3
    assert _judge(m, "platform_memory", "<", "4GB").passed
    assert not _judge(m, "platform_memory", "<", "3GB").passed
    assert "3.0 GiB" in _judge(m, "platform_memory", "<", "3GB").failure


def test_unfair_users_lower_the_index():
    m = LoadMetrics()
    for label, seconds in [("a", 0.01), ("b", 0.01), ("c", 0.01), ("d", 4.0)]:
        m.record_completion(m.user(label), seconds, m.started_mono)
    assert m.fairness < 0.4  # 0.01 s counts as the 0.25 s floor: 4 s is 16 times that
    assert _judge(m, "fairness", ">", "0.7").passed is False


def test_summary_is_json_and_histograms_merge():
    a, b = _metrics([10.0] * 50), _metrics([30.0] * 50)
    sa, sb = json.loads(a.to_json()), json.loads(b.to_json())
    assert sa["completed"] == 50 and sa["latency"]["completion"]["p95_ms"] == pytest.approx(10, rel=0.01)
    merged = merged_percentile(
        [sa["histograms_encoded"]["completion"], sb["histograms_encoded"]["completion"]], 90
    )
    assert merged == pytest.approx(0.030, rel=0.01)


def test_run_id_collisions_are_counted():
    m = LoadMetrics()
    for run_id in ("r1", "r2", "r1"):
        m.record_run_id(run_id)
    assert m.run_id_collisions == 1 and len(m.run_ids) == 2 and "r1" in m.run_ids


def test_the_run_id_ledger_finds_every_repeat_among_many_ids():
    from crosstalk.metrics import RunIdLedger

    ledger = RunIdLedger()
    for n in range(40_000):  # more ids than buckets: buckets hold several
        ledger.add(f"run-{n}")
    ledger.add("run-7")  # an early id
    ledger.add("run-39999")  # the latest id
    assert len(ledger) == 40_000 and ledger.collisions == 2
    assert "run-42" in ledger and "run-40000" not in ledger


def test_the_fast_recorder_fills_the_same_buckets_as_hdrhistogram():
    import random

    from crosstalk.metrics import new_histogram, record_seconds

    fast, reference = new_histogram(), new_histogram()
    rng = random.Random(7)
    for _ in range(5000):
        seconds = rng.choice([rng.uniform(0, 0.002), rng.uniform(0, 2), rng.uniform(0, 4000)])
        record_seconds(fast, seconds)
        reference.record_value(min(max(int(seconds * 1e6), 1), 3_600_000_000))
    assert list(fast.counts) == list(reference.counts)
    assert (fast.total_count, fast.min_value, fast.max_value) == (
        reference.total_count, reference.min_value, reference.max_value)
    assert fast.get_value_at_percentile(99) == reference.get_value_at_percentile(99)


def test_fairness_counts_waits_under_the_floor_alike():
    stalled = [0.06] * 11 + [0.45] * 9  # one 0.4 s stall of the test machine, not of the platform
    assert jain_index(stalled) < 0.7
    assert jain_index(stalled, floor=0.25) > 0.9
    # half the users served 8 times slower (the unfair_scheduling fault) is still unfair above the floor
    assert jain_index([0.55] * 6 + [4.4] * 6, floor=0.25) < 0.7
    assert jain_index([0.01, 0.2], floor=0.25) == pytest.approx(1.0)

"""The resource series: statistics over samples, the background schedule, the psutil source."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from assertionengine import AssertionOperator
from crosstalk.metrics import LoadMetrics
from crosstalk.resources_sampler import (
    BackgroundSampler,
    Sample,
    Series,
    percentile,
    psutil_source,
    record_series,
)


def _series(points: list[tuple[float, float, int]]) -> Series:
    return Series([Sample(at, cpu, rss) for at, cpu, rss in points])


def test_mean_cpu_is_cpu_used_over_the_whole_window_not_one_sample():
    # 2 cores; a 0.25 s burst at 2 cores (100 %) then idle: the 2 s window's mean is 12.5 %
    series = _series([(0.0, 10.0, 100), (0.25, 10.5, 300), (0.5, 10.5, 200), (2.0, 10.5, 150)])
    stats = series.stats(cores=2)
    assert stats.window_s == pytest.approx(2.0)
    assert stats.cpu_seconds == pytest.approx(0.5)
    assert stats.cpu_mean_pct == pytest.approx(12.5)
    assert stats.cpu_peak_pct == pytest.approx(100.0)
    assert stats.rss_peak == 300 and stats.samples == 4


def test_p90_of_interval_samples():
    # ten 1 s intervals using 0.1, 0.2, ... 1.0 core-seconds on 1 core
    points, cpu = [(0.0, 0.0, 1)], 0.0
    for i in range(1, 11):
        cpu += i / 10
        points.append((float(i), cpu, 1))
    stats = _series(points).stats(cores=1)
    assert stats.cpu_p90_pct == pytest.approx(90.0)
    assert stats.cpu_mean_pct == pytest.approx(55.0)
    assert percentile([5.0], 90) == 5.0


def test_an_empty_or_single_sample_series_has_no_cpu_figure():
    assert Series().stats(2).cpu_mean_pct is None
    one = _series([(1.0, 3.0, 42)]).stats(2)
    assert one.cpu_mean_pct is None and one.rss_peak == 42


def test_sampler_keeps_a_fixed_schedule_and_counts_failing_samples():
    calls = {"n": 0}

    def source() -> tuple[float, int]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("scrape failed")
        return float(calls["n"]), 1000 * calls["n"]

    sampler = BackgroundSampler({"platform": source}, interval=0.05, min_window=0.5).start()
    assert 0.4 < sampler.remaining() <= 0.5
    time.sleep(sampler.remaining())
    sampler.stop()
    assert sampler.remaining() == 0.0
    series = sampler.series["platform"]
    assert series.failures == 1 and "scrape failed" in series.last_error
    # start + ~10 scheduled + stop, minus the failed one; a loaded machine may skip a tick or two
    assert 6 <= len(series.samples) <= 12
    stats = series.stats(1)
    assert stats.window_s >= 0.5
    assert stats.rss_peak == series.samples[-1].rss_bytes
    assert "0.25" not in sampler.statistic and "0.05 s" in sampler.statistic


def test_sampler_rejects_a_non_positive_interval():
    with pytest.raises(ValueError, match="interval must be positive"):
        BackgroundSampler({}, interval=0)


def test_psutil_source_counts_a_busy_child_and_keeps_cpu_of_exited_processes():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.run([sys.executable, '-c', 'import time\\n"
                               "end = time.process_time() + 0.4\\nwhile time.process_time() < end: pass']); "
                               "time.sleep(30)"])
    try:
        source = psutil_source([parent.pid])
        cpu0, rss0 = source()
        assert rss0 > 0
        deadline = time.monotonic() + 20
        cpu = cpu0
        while time.monotonic() < deadline:
            cpu, _ = source()
            if cpu - cpu0 >= 0.3:
                break
            time.sleep(0.05)
        # the child has spent its 0.4 s and exited: its CPU stays in the total
        time.sleep(0.5)
        later, _ = source()
        assert later >= cpu and later - cpu0 >= 0.3, (cpu0, cpu, later)
    finally:
        parent.kill()
        parent.wait()


def test_record_series_fills_the_metric_table_and_names_the_window():
    sampler = BackgroundSampler({"platform": lambda: (1.0, 2048), "generator": lambda: (0.0, 4096)},
                                interval=0.25, min_window=0.0).start()
    sampler.stop()
    metrics = LoadMetrics("t")
    metrics.resources.cores = 2
    record_series(metrics.resources, sampler)
    assert metrics.resources.platform_memory_peak == 2048
    assert metrics.resources.generator_memory_peak == 4096
    assert metrics.resources.sample_interval_s == 0.25
    assert metrics.judge("platform_memory", AssertionOperator["<"], "1MB").passed
    assert "samples at 0.25 s" in metrics.judge("platform_memory", AssertionOperator[">"], "1MB").failure
    assert "mean CPU over the load window" in metrics.resources.statistic

"""The contract's test hooks: parsing Prometheus process metrics, counter resets, skip reasons."""

from __future__ import annotations

import pytest
from crosstalk import testhooks

TEXT = """# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.048576e+08
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 100.0
"""


def test_process_metrics_are_read_from_prometheus_text():
    assert testhooks.parse_process_metrics(TEXT) == (12.5, 104857600)


def test_several_processes_in_one_endpoint_are_summed():
    text = ('process_cpu_seconds_total{pid="1"} 1.5\nprocess_cpu_seconds_total{pid="2"} 2.0\n'
            'process_resident_memory_bytes{pid="1"} 100\nprocess_resident_memory_bytes{pid="2"} 50\n')
    assert testhooks.parse_process_metrics(text) == (3.5, 150)


def test_missing_metrics_are_named():
    with pytest.raises(ValueError, match="serves no process_resident_memory_bytes"):
        testhooks.parse_process_metrics("process_cpu_seconds_total 1\n", "http://x/metrics")


def test_the_source_sums_services_and_survives_a_restart(monkeypatch):
    readings = {"a": [(10.0, 100), (11.0, 120), (0.5, 90)], "b": [(5.0, 10), (6.0, 10), (7.0, 10)]}
    monkeypatch.setattr(testhooks, "scrape", lambda url, timeout: readings[url].pop(0))
    source = testhooks.prometheus_source(["a", "b"])
    assert source() == (15.0, 110)
    assert source() == (17.0, 130)
    assert source() == (18.5, 100)  # a restarted: its 11 s are carried, the total never goes down


def test_metrics_urls_and_the_injection_reason():
    assert testhooks.metrics_urls("local") == []
    assert testhooks.metrics_urls("off") == []
    assert testhooks.metrics_urls(" http://a/m , http://b/m ") == ["http://a/m", "http://b/m"]
    caps = {"fault_injection": ["workspace_backend_fail"]}
    assert testhooks.missing_injection(caps, "workspace_backend_fail", "http://b") is None
    reason = testhooks.missing_injection({}, "workspace_analytics_fail", "http://b")
    assert reason.startswith("needs:fault-injection: http://b/health does not advertise")
    assert "--test-hooks" in reason and "\n" not in reason


def test_connection_gauges_are_read_and_summed():
    text = ("crosstalk_websockets_active 3.0\ncrosstalk_connections_tracked 5.0\n"
            "crosstalk_connections_tracked 1.0\nprocess_open_fds 40\n")
    assert testhooks.gauges(text, (testhooks.ACTIVE, testhooks.TRACKED)) == {
        "crosstalk_websockets_active": 3.0, "crosstalk_connections_tracked": 6.0}
    assert testhooks.gauges("process_open_fds 4\n", (testhooks.ACTIVE,)) == {}

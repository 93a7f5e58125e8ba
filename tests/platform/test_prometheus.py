"""The metrics capability: each service serves Prometheus text with the standard process metrics."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.platform.chatclient import TIMEOUT


@pytest.mark.parametrize("service", ["auth_url", "backend_url"])
def test_each_service_serves_standard_process_metrics(platform, service):
    base = platform.state[service]
    health = requests.get(f"{base}/health", timeout=TIMEOUT).json()
    path = health["capabilities"]["metrics"]
    reply = requests.get(f"{base}{path}", timeout=TIMEOUT)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {s.name: s.value for f in text_string_to_metric_families(reply.text) for s in f.samples}
    assert samples["process_cpu_seconds_total"] > 0
    assert samples["process_resident_memory_bytes"] > 10 * 2**20
    assert samples["process_start_time_seconds"] > 0


def test_the_backend_serves_the_connection_gauges(platform):
    from crosstalk import testhooks

    url = f"{platform.backend_url}/metrics/prometheus"
    leaked, source = testhooks.leaked_connections([url])
    assert leaked is not None and leaked >= 0 and source == url
    text = requests.get(url, timeout=TIMEOUT).text
    assert {"crosstalk_websockets_active", "crosstalk_connections_tracked"} <= set(
        testhooks.gauges(text, ("crosstalk_websockets_active", "crosstalk_connections_tracked")))


def test_json_metrics_of_the_backend_stay_as_they_were(platform):
    body = requests.get(f"{platform.backend_url}/metrics", timeout=TIMEOUT).json()
    assert {"active_websockets", "tracked_connections", "rss_bytes", "faults"} <= body.keys()

"""The contract's optional test hooks: failure injection and Prometheus process metrics.

A platform advertises them in the body of ``GET /health``::

    {"status": "ok", ..., "capabilities": {"fault_injection": ["workspace_backend_fail", ...],
                                           "metrics": "/metrics/prometheus"}}

* ``fault_injection`` (capability ``fault-injection``): names a request may put in
  the ``X-Crosstalk-Inject`` header to make one step of *that request* fail, so a
  rollback is proven on the target itself;
* ``metrics`` (capability ``metrics``): the path, on each service, of a Prometheus
  text endpoint with ``process_cpu_seconds_total`` and
  ``process_resident_memory_bytes`` (what ``prometheus_client`` exposes).
  ``METRICS_URL`` (comma-separated URLs) names the endpoints explicitly.

Importing this module registers the two probes in ``crosstalk.context.PROBES``,
so ``Start Or Attach Platform`` fills the capabilities from the target itself.

Example::

    cpu_seconds, rss_bytes = prometheus_source(["http://api:9100/metrics"])()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from prometheus_client.parser import text_string_to_metric_families

from . import context
from .context import Capability, CapabilityState

INJECT_HEADER = "X-Crosstalk-Inject"
PROBE_TIMEOUT = 5.0
SCRAPE_TIMEOUT = 2.0
CPU = "process_cpu_seconds_total"
RSS = "process_resident_memory_bytes"
LOCAL = "local"  # METRICS_URL of the reference platform: its processes are sampled with psutil


def capabilities(base_url: str, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """The ``capabilities`` object of ``GET {base_url}/health`` (empty when absent or unreachable).

    Example:
        capabilities("http://127.0.0.1:8000").get("fault_injection", [])
    """
    try:
        body = requests.get(f"{base_url.rstrip('/')}/health", timeout=timeout).json()
    except (requests.RequestException, ValueError):
        return {}
    caps = body.get("capabilities") if isinstance(body, dict) else None
    return caps if isinstance(caps, dict) else {}


def missing_injection(caps: dict[str, Any], injection: str, backend_url: str) -> str | None:
    """None when ``injection`` is advertised, else the one-line skip reason."""
    offered = caps.get("fault_injection") or []
    if isinstance(offered, list) and injection in offered:
        return None
    return (
        f"needs:fault-injection: {backend_url}/health does not advertise {injection!r} in "
        f"capabilities.fault_injection (offered: {', '.join(map(str, offered)) or 'none'}); "
        f"enable the platform's test hooks ({INJECT_HEADER}; reference platform: --test-hooks)"
    )


# ---------------------------------------------------------------------- Prometheus
def parse_process_metrics(text: str, where: str = "the endpoint") -> tuple[float, int]:
    """``(process_cpu_seconds_total, process_resident_memory_bytes)`` summed over every sample in ``text``.

    Raises ValueError naming what is missing.
    """
    cpu = rss = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == CPU:
                cpu = (cpu or 0.0) + float(sample.value)
            elif sample.name == RSS:
                rss = (rss or 0) + int(sample.value)
    missing = [name for name, value in ((CPU, cpu), (RSS, rss)) if value is None]
    if missing:
        raise ValueError(f"{where} serves no {' and no '.join(missing)}")
    return float(cpu), int(rss)  # type: ignore[arg-type]


def gauges(text: str, names: Sequence[str]) -> dict[str, float]:
    """The summed values of the metrics ``names`` found in Prometheus ``text`` (absent ones left out)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                found[sample.name] = found.get(sample.name, 0.0) + float(sample.value)
    return found


ACTIVE, TRACKED = "crosstalk_websockets_active", "crosstalk_connections_tracked"


def leaked_connections(urls: Sequence[str], timeout: float = SCRAPE_TIMEOUT) -> tuple[int | None, str]:
    """``tracked - active`` connection entries over ``urls`` (contract rule CAP-2's optional gauges),
    or ``(None, why not)``."""
    for url in urls:
        try:
            reply = requests.get(url, timeout=timeout)
            values = gauges(reply.text, (ACTIVE, TRACKED)) if reply.status_code == 200 else {}
        except requests.RequestException as exc:
            return None, f"{url} is unreachable ({type(exc).__name__})"
        if ACTIVE in values and TRACKED in values:
            return int(values[TRACKED] - values[ACTIVE]), url
    return None, f"no {TRACKED} and {ACTIVE} gauges at {', '.join(urls) or 'any metrics endpoint'}"


def leaked_connection_count(backend_url: str, metrics_url: str | None = None) -> tuple[int | None, str]:
    """Connection entries the server holds for sockets already closed, or ``(None, why not)``.

    ``tracked_connections - active_websockets`` from the reference's ``/metrics`` JSON, else
    the contract's Prometheus gauges at ``metrics_url`` (``METRICS_URL``) or at the path
    ``/health`` advertises (`leaked_connections`).

    Example:
        leaked, source = leaked_connection_count("http://127.0.0.1:8000")
    """
    base = backend_url.rstrip("/")
    try:
        metrics = requests.get(f"{base}/metrics", timeout=PROBE_TIMEOUT).json()
        return int(metrics["tracked_connections"]) - int(metrics["active_websockets"]), f"{base}/metrics"
    except (requests.RequestException, ValueError, KeyError, TypeError):
        pass
    return leaked_connections(metrics_urls(metrics_url or "") or advertised_metrics_urls(base))


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT) -> tuple[float, int]:
    """One scrape of a Prometheus text endpoint; ValueError with one line on any failure."""
    try:
        reply = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise ValueError(f"{url} is unreachable ({type(exc).__name__})") from None
    if reply.status_code != 200:
        raise ValueError(f"{url} answered HTTP {reply.status_code}")
    return parse_process_metrics(reply.text, url)


def prometheus_source(urls: Sequence[str], timeout: float = SCRAPE_TIMEOUT):
    """A resource-sampler source: CPU seconds and RSS summed over the platform's Prometheus endpoints.

    A service restarted mid-window resets its counter; the total never goes down
    (a drop is counted from zero again, like Prometheus' ``rate``).

    Example:
        BackgroundSampler({"platform": prometheus_source(urls)})
    """
    urls = list(urls)
    last: dict[str, float] = {}
    carried: dict[str, float] = {}

    def sample() -> tuple[float, int]:
        cpu_total, rss_total = 0.0, 0
        for url in urls:
            cpu, rss = scrape(url, timeout)
            if cpu < last.get(url, 0.0):  # counter reset (process restarted)
                carried[url] = carried.get(url, 0.0) + last[url]
            last[url] = cpu
            cpu_total += carried.get(url, 0.0) + cpu
            rss_total += rss
        return cpu_total, rss_total

    return sample


def metrics_urls(value: str) -> list[str]:
    """URLs of ``METRICS_URL`` (comma-separated); empty for ``local``/empty/off."""
    if not value or value.strip().lower() == LOCAL or context.is_off(value):
        return []
    return [u.strip() for u in value.split(",") if u.strip()]


def advertised_metrics_urls(*base_urls: str) -> list[str]:
    """``<base><capabilities.metrics>`` of every service that advertises a metrics path."""
    found = []
    for base in dict.fromkeys(u.rstrip("/") for u in base_urls if u):
        path = capabilities(base).get("metrics")
        if isinstance(path, str) and path.startswith("/"):
            found.append(base + path)
    return found


def is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------- context probes
def probe_fault_injection(ctx) -> CapabilityState:
    """Available when ``BACKEND_URL/health`` advertises injections (unless ``FAULT_INJECTION=off``)."""
    if context.is_off(ctx.values.get("FAULT_INJECTION")):
        return ctx.capabilities.get(Capability.FAULT_INJECTION) or CapabilityState(
            False, "FAULT_INJECTION is off")
    backend = ctx.get("BACKEND_URL")
    offered = capabilities(backend).get("fault_injection") or []
    if isinstance(offered, list) and offered:
        return CapabilityState(True, detail=f"{backend}/health advertises {', '.join(map(str, offered))}")
    return CapabilityState(
        False, f"{backend}/health advertises no capabilities.fault_injection: enable the platform's test "
               f"hooks ({INJECT_HEADER}; reference platform: --test-hooks or REFPLAT_TEST_HOOKS=1)")


def probe_metrics(ctx) -> CapabilityState:
    """Available with ``METRICS_URL`` endpoints (or advertised ones) that serve the process metrics,
    or for a target whose services listen on this machine (sampled with psutil)."""
    value = ctx.values.get("METRICS_URL", "")
    if context.is_off(value):
        return ctx.capabilities.get(Capability.METRICS) or CapabilityState(False, "METRICS_URL is off")
    urls = metrics_urls(value)
    source = "METRICS_URL"
    if not urls and value.strip().lower() != LOCAL:
        urls = advertised_metrics_urls(ctx.get("AUTH_URL"), ctx.get("BACKEND_URL"))
        source = "advertised in /health"
        if urls and all(is_loopback(u) for u in (ctx.get("AUTH_URL"), ctx.get("BACKEND_URL"))):
            urls = []  # a local target: its processes are sampled directly, more precisely
    if urls:
        try:
            for url in urls:
                scrape(url, PROBE_TIMEOUT)
        except ValueError as exc:
            return CapabilityState(
                False, f"metrics {source}: {exc}: give Prometheus endpoints with {CPU} and {RSS} in "
                       f"METRICS_URL ({context.ENV_PREFIX}METRICS_URL)")
        ctx.values["METRICS_URL"] = ",".join(urls)
        ctx.sources["METRICS_URL"] = ctx.sources.get("METRICS_URL") if source == "METRICS_URL" else source
        return CapabilityState(True, detail=f"Prometheus ({source}): {', '.join(urls)}")
    if value.strip().lower() == LOCAL or all(is_loopback(ctx.get(n)) for n in ("AUTH_URL", "BACKEND_URL")):
        return CapabilityState(True, detail="the platform's local processes (psutil)")
    return CapabilityState(
        False, f"no resource metrics from this target: set METRICS_URL ({context.ENV_PREFIX}METRICS_URL) to "
               f"its Prometheus endpoints with {CPU} and {RSS}, or advertise capabilities.metrics in /health")


context.PROBES[Capability.FAULT_INJECTION] = probe_fault_injection
context.PROBES[Capability.METRICS] = probe_metrics

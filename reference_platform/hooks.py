"""Contract hooks a test runner may use: failure injection and process metrics.

*Failure injection* (contract capability ``fault-injection``): a request may
carry ``X-Crosstalk-Inject: <name>[,<name>]`` to make one named step of that
request fail, so a tester can prove the platform rolls back on a real target.
The header is honoured **only** when the platform was started with test hooks
(``--test-hooks`` or ``REFPLAT_TEST_HOOKS=1``; Crosstalk turns them on when it
starts the reference platform itself) and ignored otherwise.  With hooks on, an
unknown name answers 400 ``unknown_injection``.  Enabled injections are
advertised in ``GET /health`` under ``capabilities.fault_injection``.

*Process metrics* (contract capability ``metrics``): each service serves the
Prometheus text format at ``/metrics/prometheus`` with the standard process
metrics of ``prometheus_client`` (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, ...), advertised under
``capabilities.metrics``.  The backend's ``GET /metrics`` (JSON) is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

HEADER = "X-Crosstalk-Inject"
ENV_VAR = "REFPLAT_TEST_HOOKS"
METRICS_PATH = "/metrics/prometheus"

INJECTIONS: dict[str, str] = {
    "workspace_backend_fail": "POST /workspaces: step 2 (backend) fails after writing; everything must "
    "roll back",
    "workspace_analytics_fail": "POST /workspaces: step 3 (analytics) fails after writing; everything must "
    "roll back",
}


class UnknownInjection(ValueError):
    pass


def from_environment() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def requested(request: Request, enabled: bool) -> frozenset[str]:
    """Injections named by the request's header; empty when test hooks are off.

    Raises UnknownInjection (to be answered with 400) for a name the platform does not know.
    """
    if not enabled:
        return frozenset()
    names = {n.strip() for n in request.headers.get(HEADER, "").split(",") if n.strip()}
    unknown = sorted(names - INJECTIONS.keys())
    if unknown:
        raise UnknownInjection(
            f"unknown injection(s) {', '.join(unknown)} in {HEADER}; known: {', '.join(sorted(INJECTIONS))}"
        )
    return frozenset(names)


def unknown_injection(exc: UnknownInjection) -> JSONResponse:
    return JSONResponse({"error": "unknown_injection", "message": str(exc)}, status_code=400)


def capabilities(enabled: bool) -> dict:
    """The ``capabilities`` object of ``GET /health``."""
    return {"fault_injection": sorted(INJECTIONS) if enabled else [], "metrics": METRICS_PATH}


CONNECTION_GAUGES = {
    "crosstalk_websockets_active": "WebSockets open now",
    "crosstalk_connections_tracked": "per-connection entries the server holds (open or not yet freed)",
}
_gauges: dict[str, Gauge] = {}


def expose_connection_gauges(active: Callable[[], float], tracked: Callable[[], float]) -> None:
    """Serve the two connection gauges of contract rule CAP-2 from this process (idempotent)."""
    pairs = (("crosstalk_websockets_active", active), ("crosstalk_connections_tracked", tracked))
    for name, function in pairs:
        if name not in _gauges:
            _gauges[name] = Gauge(name, CONNECTION_GAUGES[name])
        _gauges[name].set_function(function)


async def prometheus_metrics(request: Request) -> Response:
    """The Prometheus text exposition of this process (default registry: process and GC metrics)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

"""Probing the optional contract hooks a target advertises in ``GET /health``.

The contract (``reference_platform/README.md``, ``docs/contract/openapi.yaml``)
lets a platform advertise optional test capabilities in its health body::

    {"status": "ok", ..., "capabilities": {"fault_injection": ["workspace_backend_fail", ...],
                                           "metrics": "/metrics/prometheus"}}

* ``fault_injection``: names a request may put in the ``X-Crosstalk-Inject``
  header to make one step of that request fail (capability ``fault-injection``);
* ``metrics``: the path, on each service, of a Prometheus text endpoint with the
  standard process metrics (capability ``metrics``).

Pure helpers plus one HTTP probe; keyword libraries turn a missing capability
into a skip naming it (``needs:fault-injection``, ``needs:metrics``).
"""

from __future__ import annotations

from typing import Any

import requests

INJECT_HEADER = "X-Crosstalk-Inject"
PROBE_TIMEOUT = 5.0


def capabilities(base_url: str, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """The ``capabilities`` object of ``GET {base_url}/health`` (empty when absent or unreachable)."""
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


def metrics_path(caps: dict[str, Any]) -> str | None:
    """The advertised Prometheus path (``/metrics/prometheus``) or None."""
    path = caps.get("metrics")
    return path if isinstance(path, str) and path.startswith("/") else None

"""The one percentile of a plain list of samples.

Load runs keep HDR histograms (:mod:`crosstalk.metrics`); short lists - the runs of a
chat round, pool waits, CPU samples - are ranked exactly here, with HdrHistogram's own
definition (nearest rank: the smallest sample with at least ``pct`` % of the samples at
or below it), so a p95 means the same wherever it is printed.  Jain's fairness index
lives in :func:`crosstalk.metrics.jain_index`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_NO_DEFAULT = object()


def percentile(values: Sequence[float], pct: float, empty: float | object = _NO_DEFAULT) -> float:
    """Nearest-rank percentile of ``values``; ``empty`` is returned for no values (else ValueError).

    Example: ``percentile([5, 1, 4, 2, 3], 50) == 3``; ``percentile([], 95, empty=0.0) == 0.0``.
    """
    if not 0 <= pct <= 100:
        raise ValueError(f"Percentile {pct} is outside 0..100: pass e.g. 95 for the 95th percentile.")
    ordered = sorted(values)
    if not ordered:
        if empty is _NO_DEFAULT:
            raise ValueError("No values: nothing was measured, so there is no percentile.")
        return float(empty)  # type: ignore[arg-type]
    rank = max(math.ceil(pct / 100.0 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]

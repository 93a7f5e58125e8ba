"""Where Crosstalk keeps what a run leaves behind (platform state, load summaries).

In a source checkout (``pip install -e .`` or the libraries imported from ``libraries/``)
that is the checkout's ``results/``, whatever the current directory, so every robot and
pabot process of the checkout shares one reference platform.  Installed from a wheel it
is ``results/`` under the current directory (the team's test project).  The environment
variable ``CROSSTALK_RESULTS`` overrides both.

Example:
    state_dir = results_root() / ".platform"
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def source_checkout() -> Path | None:
    """The repository these libraries run from, or None when they are an installed copy."""
    markers = ("pyproject.toml", "reference_platform", "suites", "libraries")
    return CHECKOUT if all((CHECKOUT / marker).exists() for marker in markers) else None


def results_root() -> Path:
    """``$CROSSTALK_RESULTS``, else the checkout's ``results/``, else ``./results``."""
    configured = os.environ.get("CROSSTALK_RESULTS")
    if configured:
        return Path(configured).resolve()
    checkout = source_checkout()
    return (checkout or Path.cwd()) / "results"

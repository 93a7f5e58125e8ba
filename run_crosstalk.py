#!/usr/bin/env python3
"""Run the Crosstalk load suites: ``crosstalk run`` for a checkout without the package installed.

    python run_crosstalk.py --quick              # the same as: crosstalk run --quick

Everything lives in ``crosstalk.runner`` (libraries/crosstalk/runner.py); see ``crosstalk run --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "libraries"))

from crosstalk.runner import (  # noqa: E402
    build_command,
    build_parser,
    by_scenario,
    environment_problem,
    main,
    merge_summaries,
)

__all__ = ["build_command", "build_parser", "by_scenario", "environment_problem", "main", "merge_summaries"]

if __name__ == "__main__":
    sys.exit(main())

"""The test command of the mutation run: a fresh reference platform from this tree, then the suites.

Exit code 0 when every selected test passed (the mutant survived), 1 otherwise (killed), so
cosmic-ray can run it once per mutant.  It reuses the detection matrix's platform launcher
and robot runner; the selection is the suites that guard the request handlers.

    python tests/mutation/run_suites.py            # once, against the unmutated tree: must exit 0
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# security, credentials, identity, enumeration, stored truth, golden path, workspaces; not the
# slow ones (the cost-growth seeding, the flood and resource-limit checks, load)
INCLUDE = ["security", "identity-and-credentials", "stored-truth", "golden-path", "workspace", "counter"]
EXCLUDE = ["cost-growth", "resource-limits", "performance", "load", "soak", "concurrency"]


def main() -> int:
    import argparse

    from tests.detection.test_detection_matrix import Platform, run_robot

    parser = argparse.ArgumentParser(description="fresh platform from this tree + the suites; 0 = all passed")
    parser.add_argument("--include", action="append", help=f"tags to run (default {INCLUDE})")
    parser.add_argument("--exclude", action="append", help=f"tags to leave out (default {EXCLUDE})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crosstalk-mutant-") as work:
        outdir = Path(work)
        try:
            with Platform([], outdir) as platform:
                tests = run_robot(platform, args.include or INCLUDE, outdir, exclude=args.exclude or EXCLUDE,
                                  exit_on_failure=True)
        except Exception as error:  # the mutant broke the platform's start: killed
            print(f"killed: {type(error).__name__}: {str(error)[:300]}")
            return 1
        failed = [f"{t.name}: {t.message[:160]}" for t in tests if t.status == "FAIL"]
        print(f"{len(tests)} tests, {len(failed)} failed" + (f"; first: {failed[0]}" if failed else ""))
        return 1 if failed or not tests else 0


if __name__ == "__main__":
    sys.exit(main())

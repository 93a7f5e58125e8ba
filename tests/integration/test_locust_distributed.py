"""Locust's distributed runner (1 master + 2 workers on loopback) driving Crosstalk users.

A short version of ``bench/locust_distributed.py``: against the correct
platform the master merges both workers' statistics and exits 0; with the
``crosstalk`` fault planted the workers report the isolation violations as
failures and the master's exit code fails the job.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
from locust_distributed import distributed_run

# never import locust here: it monkey-patches ssl with gevent, which breaks the rest of the session
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed (requirements-dev.txt)", allow_module_level=True)


def test_two_workers_merge_clean_statistics(platform, tmp_path):
    result = distributed_run(platform.state, workers=2, users=10, run_time=6, workdir=tmp_path)
    verdict = result["verdict"]
    assert verdict is not None, "\n".join(result["output_tail"])
    assert result["exit_code"] == 0, verdict
    assert verdict["workers"] == 2 and verdict["chat_ok"] > 10 and verdict["violations"] == {}


def test_a_planted_crosstalk_fault_fails_the_distributed_run(platform_factory, tmp_path):
    faulty = platform_factory(faults=["crosstalk"])
    result = distributed_run(faulty.state, workers=2, users=10, run_time=6, workdir=tmp_path)
    verdict = result["verdict"]
    assert verdict is not None, "\n".join(result["output_tail"])
    assert result["exit_code"] == 1
    assert verdict["violations"].get("misrouted", 0) + verdict["violations"].get("foreign_canary", 0) > 0

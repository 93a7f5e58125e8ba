"""The measurement lock: performance tests measure alone on a target, the others share it.

Real ``flock`` locks in a temporary directory: two `MeasurementLock` objects are two
open files, so they contend exactly as two robot processes do.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from crosstalk.measurelock import WAIT_ENV, MeasurementLock, MeasurementLockTimeout, wait_seconds

TARGET = "http://127.0.0.1:1"


def lock(tmp_path) -> MeasurementLock:
    return MeasurementLock.for_target(TARGET, tmp_path)


def test_shared_holders_run_side_by_side(tmp_path):
    first, second = lock(tmp_path), lock(tmp_path)
    first.acquire(exclusive=False, holder="a", timeout=0.5)
    assert second.acquire(exclusive=False, holder="b", timeout=0.5) < 0.5
    assert first.held and second.held


def test_performance_test_waits_for_running_tests_and_says_so(tmp_path):
    running, measuring = lock(tmp_path), lock(tmp_path)
    running.acquire(exclusive=False, holder="Chat / Hello", timeout=0.5)
    with pytest.raises(MeasurementLockTimeout, match=r"^Load / Burst waited too long for its exclusive turn "
                       r"on the platform \(held by the tests already running on it\): raise "
                       f"{WAIT_ENV}"):
        measuring.acquire(exclusive=True, holder="Load / Burst", timeout=0.2)
    assert not measuring.held
    running.release()
    measuring.acquire(exclusive=True, holder="Load / Burst", timeout=0.5)


def test_no_new_test_starts_while_a_performance_test_waits(tmp_path):
    running, measuring, newcomer = lock(tmp_path), lock(tmp_path), lock(tmp_path)
    running.acquire(exclusive=False, holder="Chat / Hello", timeout=0.5)
    waiter = threading.Thread(target=measuring.acquire,
                              kwargs={"exclusive": True, "holder": "Load / Burst", "timeout": 5})
    waiter.start()
    time.sleep(0.2)
    # a busy process must not starve the waiting measurement
    with pytest.raises(MeasurementLockTimeout, match=r"held by Load / Burst \(pid \d+\)"):
        newcomer.acquire(exclusive=False, holder="Chat / Next", timeout=0.3)
    running.release()
    waiter.join(5)
    assert measuring.held and measuring.exclusive
    measuring.release()
    assert newcomer.acquire(exclusive=False, holder="Chat / Next", timeout=1) < 1


def test_two_performance_tests_take_turns(tmp_path):
    first, second = lock(tmp_path), lock(tmp_path)
    first.acquire(exclusive=True, holder="Load / Burst", timeout=0.5)
    with pytest.raises(MeasurementLockTimeout, match="held by Load / Burst"):
        second.acquire(exclusive=True, holder="Sustained / Rounds", timeout=0.2)
    first.release()
    second.acquire(exclusive=True, holder="Sustained / Rounds", timeout=0.5)


def test_targets_do_not_share_a_lock(tmp_path):
    one = MeasurementLock.for_target("http://a", tmp_path)
    other = MeasurementLock.for_target("http://b", tmp_path)
    one.acquire(exclusive=True, holder="a", timeout=0.5)
    assert other.acquire(exclusive=True, holder="b", timeout=0.5) < 0.5


def test_a_killed_holder_frees_the_target(tmp_path):
    code = ("import time; from pathlib import Path; from crosstalk.measurelock import MeasurementLock as L;"
            f"held = L.for_target({TARGET!r}, Path({str(tmp_path)!r}));"
            "held.acquire(exclusive=True, holder='x', timeout=5); print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(MeasurementLockTimeout):
            lock(tmp_path).acquire(exclusive=False, holder="y", timeout=0.2)
    finally:
        child.kill()
        child.wait(5)
    assert lock(tmp_path).acquire(exclusive=False, holder="y", timeout=2) < 2


def test_the_wait_is_configurable_and_a_bad_value_is_one_line(monkeypatch):
    monkeypatch.setenv(WAIT_ENV, "600")
    assert wait_seconds() == 600
    monkeypatch.setenv(WAIT_ENV, "ten minutes")
    with pytest.raises(MeasurementLockTimeout, match=r"^CROSSTALK_MEASUREMENT_WAIT='ten minutes' is not a "
                       r"number of seconds: unset it or give e\.g\. CROSSTALK_MEASUREMENT_WAIT=600$"):
        wait_seconds()

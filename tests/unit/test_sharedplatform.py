"""Sharing one platform between processes: lock, holders, stale state (platform start faked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from crosstalk import sharedplatform
from crosstalk.sharedplatform import SharedPlatform, pid_alive


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.fixture
def shared(tmp_path, monkeypatch):
    started: list[subprocess.Popen] = []
    platform = SharedPlatform("", root=tmp_path, linger=0)

    def fake_start(timeout):
        process = sleeper()
        started.append(process)
        state = {"backend_url": "http://127.0.0.1:1", "pids": {"launcher": process.pid}}
        platform.state_file.write_text(json.dumps(state))
        return state

    monkeypatch.setattr(platform, "_start", fake_start)
    monkeypatch.setattr(sharedplatform, "check_health", lambda url, timeout=5.0: None)
    platform.started = started
    yield platform
    for process in started:
        process.kill()
        process.wait()


def test_first_acquire_starts_and_records_holder(shared):
    state = shared.acquire()
    assert len(shared.started) == 1
    assert json.loads(shared.holders_file.read_text()) == [os.getpid()]
    assert pid_alive(state["pids"]["launcher"])


def test_second_process_joins_and_last_one_stops(shared):
    state = shared.acquire()
    other = sleeper()
    try:
        holders = json.loads(shared.holders_file.read_text())
        shared.holders_file.write_text(json.dumps([*holders, other.pid]))
        assert shared.acquire() == state  # joins, no second start
        assert len(shared.started) == 1
        assert shared.release() == "held"  # the other process still holds it
        assert pid_alive(state["pids"]["launcher"])
    finally:
        other.kill()
        other.wait()
    # the other holder died without releasing: the next release prunes it and stops the platform
    shared.acquire()
    assert shared.release() == "stopped"
    shared.started[0].wait(5)
    assert not pid_alive(state["pids"]["launcher"])
    assert not shared.state_file.exists()


def test_stale_state_with_dead_launcher_is_replaced(shared):
    dead = sleeper()
    dead.kill()
    dead.wait()
    shared.directory.mkdir(parents=True, exist_ok=True)
    shared.state_file.write_text(json.dumps({"backend_url": "http://x", "pids": {"launcher": dead.pid}}))
    state = shared.acquire()
    assert state["pids"]["launcher"] != dead.pid
    assert len(shared.started) == 1


def test_faults_get_their_own_platform(tmp_path):
    assert SharedPlatform("b,a", root=tmp_path).directory.name == "a+b"
    assert SharedPlatform("", root=tmp_path).directory.name == "default"


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(None)


def test_last_holder_lingers_then_a_detached_reaper_stops_it(shared):
    state = shared.acquire()
    shared.linger = 0.3
    assert shared.release() == "lingering"
    assert pid_alive(state["pids"]["launcher"])  # still up: a process starting now would join it
    deadline = time.monotonic() + 15
    while (
        pid_alive(state["pids"]["launcher"]) or shared.state_file.exists()
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(state["pids"]["launcher"])
    assert not shared.state_file.exists()


def test_reaper_leaves_a_platform_that_someone_joined(shared):
    state = shared.acquire()
    assert shared.reap(state["pids"]["launcher"]) is False  # this process holds it
    assert pid_alive(state["pids"]["launcher"])

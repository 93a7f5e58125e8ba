"""Launcher lifecycle: clean stop leaves no process, port or data behind; failures are one clear line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import REPO_ROOT, start_platform


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _platform_processes(running) -> list[psutil.Process]:
    procs = []
    for pid in [running.process.pid, *running.pids.values()]:
        if pid is None:
            continue
        try:
            proc = psutil.Process(pid)
            procs.append(proc)
            procs.extend(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return procs


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def assert_nothing_left(running, procs: list[psutil.Process], ports: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.05)
    survivors = [f"{p.pid} {p.name()}" for p in procs if _alive(p)]
    assert not survivors, f"processes left after stop: {survivors}"
    busy = [port for port in ports if not _port_free(port)]
    assert not busy, f"ports still bound after stop: {busy}"
    assert not Path(running.state["data_dir"]).exists(), f"data dir left: {running.state['data_dir']}"
    assert not running.state_file.exists(), "state file left after stop"


def _ports(running) -> list[int]:
    ports = [_port(running.auth_url), _port(running.backend_url)]
    if not os.environ.get("REDIS_URL"):
        ports.append(_port(running.redis_url))
    if not os.environ.get("DATABASE_URL"):
        ports.append(_port(running.state["auth_database_url"]))
    return ports


def test_ctrl_c_leaves_nothing_behind(tmp_path):
    running = start_platform(work_dir=tmp_path)
    procs, ports = _platform_processes(running), _ports(running)
    assert len(procs) >= 4, f"expected launcher, services, postgres and redis, found {procs}"
    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(30) == 0, running.log_tail()
    assert_nothing_left(running, procs, ports)


def test_a_dying_service_stops_everything_with_one_line(tmp_path):
    running = start_platform(work_dir=tmp_path)
    procs, ports = _platform_processes(running), _ports(running)
    os.kill(running.pids["backend"], signal.SIGKILL)
    code = running.process.wait(30)
    assert code != 0
    assert "backend service exited" in running.log_tail(), running.log_tail()
    assert_nothing_left(running, procs, ports)


def _launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reference_platform", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_port_in_use_is_one_clear_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _launch("--auth-port", str(port), "--backend-port", "0")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("reference_platform:")]
    assert len(errors) == 1 and f"port {port}" in errors[0] and "--auth-port" in errors[0], result.stderr


def test_unknown_fault_lists_the_valid_names():
    result = _launch("--faults", "crosstalk,typo_fault", "--auth-port", "0", "--backend-port", "0")
    assert result.returncode == 2
    assert "typo_fault" in result.stderr and "bola_rest" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unreachable_database_url_is_one_clear_line():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    env = dict(os.environ, DATABASE_URL=f"postgresql://someone:hunter2@127.0.0.1:{dead_port}/postgres")
    env.pop("REDIS_URL", None)
    result = _launch("--auth-port", "0", "--backend-port", "0", env=env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("reference_platform:")]
    assert len(errors) == 1 and "DATABASE_URL" in errors[0] and "not reachable" in errors[0], result.stderr
    assert "hunter2" not in result.stderr


def test_a_killed_launchers_leftovers_are_reaped_by_the_next_start(tmp_path):
    running = start_platform(work_dir=tmp_path)
    procs, ports = _platform_processes(running), _ports(running)
    running.process.kill()  # SIGKILL: no cleanup at all
    running.process.wait(10)
    services = [psutil.Process(running.pids[name]) for name in ("auth", "backend")]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in services) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in services), "services outlived their SIGKILLed launcher"
    running.state_file.unlink(missing_ok=True)  # nobody was left to remove it
    successor = start_platform(work_dir=tmp_path)
    try:
        assert "removed" in successor.log_tail(), successor.log_tail()
        assert_nothing_left(running, procs, ports)
    finally:
        successor_procs, successor_ports = _platform_processes(successor), _ports(successor)
        assert successor.stop() == 0, successor.log_tail()  # SIGTERM
    assert_nothing_left(successor, successor_procs, successor_ports)


def test_health_names_a_failing_store_with_503(tmp_path, monkeypatch):
    import requests

    from reference_platform.embedded import EmbeddedRedis

    external = EmbeddedRedis(tmp_path / "redis").start()
    monkeypatch.setenv("REDIS_URL", external.url)  # external: the launcher does not watch it
    running = start_platform(work_dir=tmp_path)
    try:
        assert requests.get(f"{running.backend_url}/health", timeout=10).status_code == 200
        external.stop()
        for url in (running.backend_url, running.auth_url):
            reply = requests.get(f"{url}/health", timeout=10)
            body = reply.json()
            assert reply.status_code == 503 and body["postgres"] == "ok", body
            assert body["redis"] == "unavailable" and "redis" in body["status"], body
            assert "Error" not in reply.text, f"/health names an internal exception: {reply.text}"
    finally:
        external.stop()
        running.stop()


def test_help_documents_env_vars_and_every_fault_switch():
    from reference_platform.faults import FAULTS

    result = _launch("--help")
    assert result.returncode == 0
    for word in ("DATABASE_URL", "REDIS_URL", "REFPLAT_FAULTS", "--auth-port", "--state-file", *FAULTS):
        assert word in result.stdout, f"--help does not mention {word}"

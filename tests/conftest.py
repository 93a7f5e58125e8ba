"""Shared pytest fixtures: a real reference platform started through its launcher.

``platform`` is one platform per test session (no fault switches, free ports, a
JWT key the tests know so they can forge tokens with exact claims).
``platform_factory`` starts more, e.g. ``platform_factory(faults=["bola_rest"])``;
each is stopped at the end of the session.  ``start_platform`` is the plain
function behind both, for use outside fixtures.

With ``DATABASE_URL`` / ``REDIS_URL`` set, the launcher uses those servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


@dataclass
class RunningPlatform:
    """A launcher process and the state file it wrote (URLs, pids, settings)."""

    process: subprocess.Popen
    state: dict
    state_file: Path
    log_file: Path
    private_key_pem: bytes | None = None
    faults: list[str] = field(default_factory=list)

    @property
    def auth_url(self) -> str:
        return self.state["auth_url"]

    @property
    def backend_url(self) -> str:
        return self.state["backend_url"]

    @property
    def ws_url(self) -> str:
        return self.state["ws_url"]

    @property
    def redis_url(self) -> str:
        return self.state["redis_url"]

    @property
    def pids(self) -> dict:
        return self.state["pids"]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no launcher log)"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the launcher and wait; returns its exit code (kills it after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(
                    f"launcher pid {self.process.pid} did not stop within {timeout:.0f} s after SIGTERM:\n"
                    f"{self.log_tail()}"
                ) from None
        return self.process.returncode


def pytest_report_header(config) -> str:
    """Where robot subprocesses find crosstalk/resources: the suites import the installed package."""
    found = next((Path(p) / "crosstalk" / "resources" for p in sys.path
                  if p and (Path(p) / "crosstalk" / "resources" / "chat.resource").is_file()), None)
    if found:
        return f"robotframework-crosstalk resources: {found}"
    return ("robotframework-crosstalk is NOT installed here: tests that run the suites fail to import "
            "crosstalk/resources/*.resource; pip install -e '.[platform]'")


def generate_private_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def launch_platform(
    faults: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    private_key_pem: bytes | None = None,
    work_dir: Path | None = None,
) -> RunningPlatform:
    """Start ``python -m reference_platform`` on free ports without waiting; see ``wait_until_up``."""
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="refplat-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    state_file = work_dir / f"state-{tag}.json"
    log_file = work_dir / f"launcher-{tag}.log"
    args = [sys.executable, "-m", "reference_platform", "--auth-port", "0", "--backend-port", "0",
            "--state-file", str(state_file), "--faults", ",".join(faults), "--test-hooks", *extra_args]
    if private_key_pem is not None:
        key_file = work_dir / f"jwt-{tag}.pem"
        key_file.write_bytes(private_key_pem)
        args += ["--jwt-private-key", str(key_file)]
    if os.environ.get("DATABASE_URL"):
        # Parallel platforms on one external server need their own databases.
        args += ["--auth-db", f"auth_{tag}", "--backend-db", f"backend_{tag}"]
    env = {k: v for k, v in os.environ.items() if k not in ("REFPLAT_FAULTS", "REFPLAT_VARIANT")}
    with open(log_file, "wb") as log:
        process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return RunningPlatform(process, {}, state_file, log_file, private_key_pem, list(faults))


def wait_until_up(platform: RunningPlatform, timeout: float = START_TIMEOUT) -> RunningPlatform:
    """Wait for the launcher's state file (written once both services are healthy)."""
    deadline = time.monotonic() + timeout
    while not platform.state_file.exists():
        if platform.process.poll() is not None:
            raise RuntimeError(
                f"reference platform (faults={platform.faults}) exited with code "
                f"{platform.process.returncode} before it was healthy:\n{platform.log_tail()}"
            )
        if time.monotonic() > deadline:
            platform.stop()
            raise RuntimeError(
                f"reference platform (faults={platform.faults}) not healthy within {timeout:.0f} s:\n"
                f"{platform.log_tail()}"
            )
        time.sleep(0.05)
    platform.state = json.loads(platform.state_file.read_text())
    return platform


def start_platform(
    faults: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    private_key_pem: bytes | None = None,
    work_dir: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> RunningPlatform:
    """Start ``python -m reference_platform`` on free ports and wait until it is healthy."""
    return wait_until_up(launch_platform(faults, extra_args, private_key_pem, work_dir), timeout)


@pytest.fixture(scope="session")
def platform_factory(tmp_path_factory) -> Iterator:
    """Start extra platforms: ``platform_factory(faults=[...], extra_args=[...])``."""
    started: list[RunningPlatform] = []

    def factory(faults: Sequence[str] = (), extra_args: Sequence[str] = (),
                private_key_pem: bytes | None = None) -> RunningPlatform:
        running = start_platform(faults, extra_args, private_key_pem, tmp_path_factory.mktemp("platform"))
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        running.stop()


@pytest.fixture(scope="session")
def platform(platform_factory) -> RunningPlatform:
    """The correct reference platform (no faults) for the whole session, with a JWT key tests know."""
    return platform_factory(private_key_pem=generate_private_key_pem())

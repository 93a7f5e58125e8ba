"""The one way to start the reference platform as a child process.

The shared platform of the suites (`crosstalk.sharedplatform`), the pytest
fixtures, the detection matrix and the benchmarks all start ``python -m
reference_platform`` on free ports through `launch`, wait for its state file
with `Launched.wait_until_up` and stop it with `Launched.stop`, so a start
failure reads the same everywhere: the exit code, the launcher log's last line
and where the full log is.

The child runs in its own session (a Ctrl-C of the caller does not reach it, and a
hung stop can kill exactly its process group).  Fault switches go on the command
line, never through an inherited ``REFPLAT_FAULTS``; the caller's target variables
(``AUTH_URL``, ``BACKEND_URL``, ``WS_URL``) are never passed on.

Example:
    platform = launch(work / "state.json", work / "platform.log", faults=["bola_rest"])
    state = platform.wait_until_up()
    ...
    platform.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import CrosstalkError
from .paths import source_checkout

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# never inherited by a launched platform: faults and mode are said on its command line, and a
# caller's target URLs mean nothing to it (DATABASE_URL / REDIS_URL do: its external servers)
INHERITED_NEVER = ("REFPLAT_FAULTS", "REFPLAT_VARIANT", "AUTH_URL", "BACKEND_URL", "WS_URL")


class PlatformError(CrosstalkError):
    """The reference platform could not be started, reached or stopped."""


def signing_key_pem() -> bytes:
    """A fresh RSA-2048 private key (PKCS#8 PEM) for the platform to sign tokens with."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_signing_key(path: Path, pem: bytes | None = None) -> Path:
    """Write ``pem`` (or a fresh key) to ``path``, readable by its owner only."""
    path.write_bytes(pem or signing_key_pem())
    path.chmod(0o600)
    return path


@dataclass
class Launched:
    """A launcher process and the state file it writes once both services are healthy."""

    process: subprocess.Popen
    state_file: Path
    log_file: Path
    faults: list[str] = field(default_factory=list)
    private_key_pem: bytes | None = None
    state: dict = field(default_factory=dict)

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

    def describe(self) -> str:
        return f"The reference platform (faults: {', '.join(self.faults)})" if self.faults else \
            "The reference platform"

    def wait_until_up(self, timeout: float = START_TIMEOUT_S) -> dict:
        """Wait for the state file and return the state; an exit or overrun raises PlatformError."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PlatformError(f"{self.describe()} exited with code {self.process.returncode} while "
                                    f"starting: {self.last_log_line()} (full log: {self.log_file})")
            state = self._read_state()
            if state:
                self.state = state
                return state
            if time.monotonic() >= deadline:
                with contextlib.suppress(PlatformError):
                    self.stop()
                raise PlatformError(f"{self.describe()} did not become healthy within {timeout:g} s: "
                                    f"{self.last_log_line()} (full log: {self.log_file})")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the launcher (it stops its services) and wait; returns its exit code.

        A launcher still running after ``timeout`` has its whole process group killed,
        then PlatformError says so.
        """
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            raise PlatformError(f"launcher pid {self.process.pid} did not stop within {timeout:g} s after "
                                f"SIGTERM and was killed (log: {self.log_file})") from None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no launcher log)"

    def last_log_line(self) -> str:
        lines = [line for line in self.log_tail(40).splitlines() if line.strip()]
        return lines[-1].strip() if lines else "(the launcher log is empty)"

    def _read_state(self) -> dict:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}  # not written yet, or written halfway
        return state if isinstance(state, dict) and state.get("backend_url") else {}


def launch(
    state_file: Path,
    log_file: Path,
    *,
    faults: Iterable[str] = (),
    variant: bool = False,
    private_key: Path | None = None,
    test_hooks: bool = True,
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    drop_env: Iterable[str] = (),
    cwd: Path | None = None,
) -> Launched:
    """Start ``python -m reference_platform`` on free ports without waiting; see `Launched.wait_until_up`.

    ``env`` replaces the inherited environment (default: this process's), minus
    `INHERITED_NEVER` and ``drop_env``.  ``cwd`` defaults to the source checkout, so
    a checkout runs its own ``reference_platform``.
    """
    faults = [name for name in faults if name]
    state_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "reference_platform", "--auth-port", "0", "--backend-port", "0",
               "--state-file", str(state_file)]
    if faults:
        command += ["--faults", ",".join(faults)]
    if variant:
        command.append("--variant")
    if private_key is not None:
        command += ["--jwt-private-key", str(private_key)]
    if test_hooks:
        command.append("--test-hooks")
    command += list(extra_args)
    dropped = set(INHERITED_NEVER) | set(drop_env)
    child_env = {k: v for k, v in (os.environ if env is None else env).items() if k not in dropped}
    with open(log_file, "wb") as log:  # one start per log: its last line is the reason
        process = subprocess.Popen(command, cwd=cwd or source_checkout() or state_file.parent, env=child_env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    pem = private_key.read_bytes() if private_key is not None else None
    return Launched(process, state_file, log_file, faults, pem)

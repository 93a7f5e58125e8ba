"""Start, share and stop the reference platform across robot/pabot processes.

The first process that needs the platform takes an ``fcntl`` lock in
``results/.platform/<faults>/``, starts ``python -m reference_platform`` detached
(its own session, so a Ctrl-C on one robot does not kill the others' platform),
and records itself in the holders file.  Later processes find the state file,
check the launcher pid is alive and the backend answers, and add themselves.
Each process removes itself on release; the last one stops the platform.  Dead
holders (a killed robot) are pruned, and stale state with a dead launcher is
replaced, so the scheme works the same under robot, pabot and concurrent robots.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

from .launcher import PlatformError, launch, write_signing_key
from .paths import results_root, source_checkout

LIBRARIES = Path(__file__).resolve().parents[1]
DEFAULT_LINGER = float(os.environ.get("CROSSTALK_PLATFORM_LINGER", "3"))
PLATFORM_ROOT = results_root() / ".platform"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
VARIANT_ENV = "REFPLAT_VARIANT"


def variant_requested(environ: dict | None = None) -> bool:
    """True when ``REFPLAT_VARIANT`` asks for the reference platform's variant mode."""
    value = (environ if environ is not None else os.environ).get(VARIANT_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def pid_alive(pid: int | None) -> bool:
    """True while ``pid`` runs; a zombie child of ours counts as dead."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def check_health(backend_url: str, timeout: float = 5.0) -> None:
    """Raise PlatformError unless ``GET {backend_url}/health`` answers 200."""
    url = backend_url.rstrip("/") + "/health"
    try:
        response = requests.get(url, timeout=timeout)
    except requests.ConnectionError as exc:
        reason = "connection refused" if "refused" in str(exc).lower() else "cannot connect"
        raise PlatformError(
            f"Backend {backend_url} is unreachable: {reason}. Start it or set BACKEND_URL / use "
            "--variablefile resources/env/local.py"
        ) from None
    except requests.RequestException as exc:
        raise PlatformError(f"Backend {backend_url} did not answer /health: {type(exc).__name__}.") from None
    if response.status_code != 200:
        raise PlatformError(
            f"Backend {backend_url} is unhealthy: /health answered {response.status_code} "
            f"{response.text[:120]}"
        )


def wait_healthy(backend_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_health(backend_url, timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except PlatformError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.3)


SERVICE_NAMES = {"auth": "auth service", "backend": "backend service", "postgres": "embedded PostgreSQL",
                 "redis": "embedded Redis", "launcher": "launcher"}
_EXIT_LINE = re.compile(r"(auth service|backend service|embedded Redis|embedded PostgreSQL)[^\n]*?"
                        r"(exited with code -?\d+|is no longer running)")


def describe_death(state: dict, log_file: str | os.PathLike | None) -> str:
    """'' while every reference service of ``state`` runs; else which died, its exit code if logged, the log.

    Example:
        describe_death(state, "results/.platform/default/platform.log")
        # 'the reference platform's backend service (pid 4242) died: exited with code -9 (log: ...)'
    """
    pids = state.get("pids") or {}
    dead = [name for name in ("backend", "auth", "postgres", "redis", "launcher")
            if pids.get(name) and not pid_alive(pids.get(name))]
    if not dead:
        return ""
    how = ""
    if log_file:
        try:
            text = Path(log_file).read_text(errors="replace")[-20000:]
        except OSError:
            text = ""
        found = _EXIT_LINE.findall(text)
        if found:
            how = f": {found[-1][0]} {found[-1][1]}"
    name = dead[0]
    also = f" (also down: {', '.join(SERVICE_NAMES[n] for n in dead[1:])})" if dead[1:] else ""
    return (f"the reference platform's {SERVICE_NAMES[name]} (pid {pids[name]}) died{how}{also}; "
            f"log: {log_file}")


@contextlib.contextmanager
def _locked(directory: Path, timeout: float = START_TIMEOUT + 30) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PlatformError(
                        f"Timed out after {timeout:g} s waiting for the platform lock {directory / 'lock'}: "
                        "another process holds it; if none is running, delete the file."
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SharedPlatform:
    """The reference platform shared by every process of this repository with the same faults."""

    def __init__(
        self, faults: str = "", root: Path = PLATFORM_ROOT, linger: float | None = None, variant: bool = False
    ):
        # pabot starts the next process a moment after one ends: a short linger lets it join the
        # running platform instead of paying a full restart (0 stops at once)
        self.linger = DEFAULT_LINGER if linger is None else linger
        self.faults = ",".join(sorted(f.strip() for f in faults.split(",") if f.strip()))
        self.variant = variant
        name = self.faults.replace(",", "+") or "default"
        self.directory = root / (f"variant-{name}" if variant else name)
        self.state_file = self.directory / "state.json"
        self.holders_file = self.directory / "holders.json"
        self.log_file = self.directory / "platform.log"
        # We hand the platform its signing key so the security suite can sign tokens
        # whose only flaw is one bad claim (expired, wrong aud, ...).
        self.key_file = self.directory / "jwt-private-key.pem"

    def _holders(self) -> set[int]:
        try:
            holders = set(json.loads(self.holders_file.read_text()))
        except (OSError, ValueError):
            holders = set()
        return {pid for pid in holders if pid_alive(pid)}

    def _write_holders(self, holders: set[int]) -> None:
        self.holders_file.write_text(json.dumps(sorted(holders)))

    def _state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self, timeout: float = START_TIMEOUT) -> dict:
        """Return the running platform's state, starting it when no live one exists."""
        with _locked(self.directory):
            state = self._state()
            if state and pid_alive(state.get("pids", {}).get("launcher")):
                try:
                    check_health(state["backend_url"])
                except PlatformError:
                    self._stop(state)
                    state = None
            else:
                if state:
                    self._stop(state)
                state = None
            if state is None:
                state = self._start(timeout)
                holders = set()
            else:
                holders = self._holders()
            holders.add(os.getpid())
            self._write_holders(holders)
            return state

    def release(self) -> str:
        """Drop this process's claim; when no live holder remains, stop the platform.

        Returns "held" (others still use it), "stopped", or "lingering" (a
        detached reaper stops it after ``linger`` seconds unless a process joins).
        """
        with _locked(self.directory):
            holders = self._holders()
            holders.discard(os.getpid())
            self._write_holders(holders)
            if holders:
                return "held"
            state = self._state()
            if not state:
                return "stopped"
            if self.linger > 0:
                self._spawn_reaper(state)
                return "lingering"
            self._stop(state)
            return "stopped"

    def _spawn_reaper(self, state: dict) -> None:
        launcher = str(state.get("pids", {}).get("launcher") or 0)
        command = [
            sys.executable,
            "-m",
            "crosstalk.sharedplatform",
            "reap",
            str(self.directory),
            f"{self.linger:g}",
            launcher,
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(LIBRARIES), os.environ.get("PYTHONPATH", "")])),
        }
        subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def reap(self, launcher: int) -> bool:
        """Stop the platform if nobody holds it and it is still the one started by ``launcher``."""
        with _locked(self.directory):
            if self._holders():
                return False
            state = self._state()
            if not state or state.get("pids", {}).get("launcher") != launcher:
                return False
            self._stop(state)
            return True

    def _start(self, timeout: float) -> dict:
        env = dict(os.environ)
        env.setdefault("CROSSTALK_RESULTS", str(results_root()))  # its data next to this state
        started = launch(self.state_file, self.log_file, faults=self.faults.split(",") if self.faults else (),
                         variant=self.variant, private_key=write_signing_key(self.key_file),
                         test_hooks=True,  # started by Crosstalk itself: the failure-injection hook is on
                         env=env, cwd=source_checkout() or self.directory)
        deadline = time.monotonic() + timeout
        state = started.wait_until_up(timeout)
        wait_healthy(state["backend_url"], max(5.0, deadline - time.monotonic()))
        return state

    def _stop(self, state: dict) -> None:
        pid = state.get("pids", {}).get("launcher")
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while pid_alive(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        self.state_file.unlink(missing_ok=True)


def _main(argv: list[str]) -> int:
    # python -m crosstalk.sharedplatform reap DIRECTORY SECONDS LAUNCHER_PID (spawned by release())
    if len(argv) != 4 or argv[0] != "reap":
        print(
            "usage: python -m crosstalk.sharedplatform reap DIRECTORY SECONDS LAUNCHER_PID", file=sys.stderr
        )
        return 2
    directory, seconds, launcher = Path(argv[1]), float(argv[2]), int(argv[3])
    time.sleep(seconds)
    platform = SharedPlatform(root=directory.parent, linger=0)
    platform.directory = directory
    platform.state_file = directory / "state.json"
    platform.holders_file = directory / "holders.json"
    platform.log_file = directory / "platform.log"
    platform.reap(launcher)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

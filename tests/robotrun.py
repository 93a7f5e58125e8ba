"""Run robot as a child process of the tests, with a deadline that kills its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_robot_process(command: Sequence[str], cwd: Path, env: Mapping[str, str], log: Path,
                      timeout: float) -> int | None:
    """Run ``command`` with its output in ``log``: its exit code, or None when it was killed at ``timeout`` s.

    Robot starts a reference platform of its own: the new session lets a kill reach it too.
    """
    with log.open("wb") as handle:
        process = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            return None

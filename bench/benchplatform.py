"""Start and stop a reference platform for the benchmark scripts (own ports, own data directory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "libraries"))


class BenchPlatform:
    """``with BenchPlatform(workdir, faults=["crosstalk"]) as state:`` - the launcher's state dict."""

    def __init__(self, workdir: Path, faults: list[str] | None = None, extra: list[str] | None = None,
                 state_file: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.faults = faults or []
        self.extra = extra or []
        self.attach = state_file
        self.process: subprocess.Popen | None = None
        self.state: dict = {}

    def __enter__(self) -> dict:
        if self.attach:
            self.state = json.loads(self.attach.read_text())
            return self.state
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = "-".join(self.faults) or "clean"
        state_file = self.workdir / f"state-{name}.json"
        log = open(self.workdir / f"platform-{name}.log", "w")
        env = dict(os.environ)
        env.pop("REFPLAT_FAULTS", None)
        command = [sys.executable, "-m", "reference_platform", "--auth-port", "0", "--backend-port", "0",
                   "--state-file", str(state_file), "--rate-limit", "100000", "--rate-burst", "100000",
                   "--fast-password-hash", *self.extra]
        if self.faults:
            command += ["--faults", ",".join(self.faults)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if state_file.exists():
                try:
                    self.state = json.loads(state_file.read_text())
                    return self.state
                except ValueError:
                    pass
            if self.process.poll() is not None:
                raise SystemExit(f"The reference platform did not start: see {log.name}")
            time.sleep(0.2)
        self.__exit__()
        raise SystemExit("The reference platform did not write its state file within 180 s.")

    def __exit__(self, *_exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def create_users(auth_url: str, count: int, prefix: str = "bench") -> list[dict]:
    """Register and log in ``count`` users (16 at a time); their email, id, token and canary."""
    from concurrent.futures import ThreadPoolExecutor

    from crosstalk.load import new_load_users, register_and_login

    users = new_load_users(count, prefix)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda u: register_and_login(auth_url, u), users))
    return [{"label": u.label, "email": u.email, "user_id": u.user_id, "token": u.access_token,
             "canary": u.canary} for u in users]

"""Start and stop a reference platform for the benchmark scripts (own ports, own data directory)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "libraries"))

from crosstalk.launcher import Launched, PlatformError, launch  # noqa: E402 - after the path is set


class BenchPlatform:
    """``with BenchPlatform(workdir, faults=["crosstalk"]) as state:`` - the launcher's state dict."""

    def __init__(self, workdir: Path, faults: list[str] | None = None, extra: list[str] | None = None,
                 state_file: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.faults = faults or []
        self.extra = extra or []
        self.attach = state_file
        self.launched: Launched | None = None
        self.state: dict = {}

    def __enter__(self) -> dict:
        if self.attach:
            self.state = json.loads(self.attach.read_text())
            return self.state
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = "-".join(self.faults) or "clean"
        # no rate limit and a cheap password hash: the bench measures the generator, not argon2
        self.launched = launch(self.workdir / f"state-{name}.json", self.workdir / f"platform-{name}.log",
                               faults=self.faults, test_hooks=False, cwd=ROOT,
                               extra_args=["--rate-limit", "100000", "--rate-burst", "100000",
                                           "--fast-password-hash", *self.extra])
        try:
            self.state = self.launched.wait_until_up(180)
        except PlatformError as exc:
            raise SystemExit(str(exc)) from None
        return self.state

    def __exit__(self, *_exc: object) -> None:
        if self.launched is not None:
            with contextlib.suppress(PlatformError):
                self.launched.stop()


def create_users(auth_url: str, count: int, prefix: str = "bench") -> list[dict]:
    """Register and log in ``count`` users (16 at a time); their email, id, token and canary."""
    from concurrent.futures import ThreadPoolExecutor

    from crosstalk.load import new_load_users, register_and_login

    users = new_load_users(count, prefix)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda u: register_and_login(auth_url, u), users))
    return [{"label": u.label, "email": u.email, "user_id": u.user_id, "token": u.access_token,
             "canary": u.canary} for u in users]


def as_test_users(users: list[dict]) -> list:
    """The bench's user dicts as Crosstalk ``TestUser`` objects holding their access token."""
    from crosstalk.model import TestUser, Tokens

    test_users = []
    for index, u in enumerate(users):
        user = TestUser(label=u["label"], email=u["email"], password="x" * 12, canary=u["canary"],
                        user_id=u["user_id"], serial=u.get("index", index))
        user.tokens = Tokens(u["token"], "")
        test_users.append(user)
    return test_users

"""Measurement windows that nothing else shares: a writer-preferring reader/writer lock per target.

pabot runs suites side by side.  That is what it is for, but a load test that
measures latency, fairness or the platform's CPU while another suite chats with
the same platform measures both: the sustained rounds' p95 went from 41 ms to
163 ms when the two load suites overlapped.  So every test on a target holds a
lock for as long as it runs:

* a test tagged ``performance`` holds it **exclusively**: it waits until the
  tests already running on that target have finished, and no new test starts
  until it is done;
* every other test holds it **shared**: any number of them run side by side.

The lock is two ``flock`` files per target (keyed by its backend URL) in the
temporary directory, so it works across robot and pabot processes and across
separate runs on one machine; the kernel drops a lock whose process died.  An
*intent* file gives the exclusive side preference: while a performance test
waits, no new shared holder gets in, so a busy pabot process cannot starve it.

Waiting is bounded (`DEFAULT_WAIT_S`, ``CROSSTALK_MEASUREMENT_WAIT`` in seconds
overrides it); running out of time fails with one line naming who holds the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .errors import CrosstalkError

DEFAULT_WAIT_S = 1800.0
WAIT_ENV = "CROSSTALK_MEASUREMENT_WAIT"
POLL_S = 0.05


class MeasurementLockTimeout(CrosstalkError):
    """A test waited longer than allowed for its turn on the target."""


def lock_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "crosstalk-measurement-locks"
    path.mkdir(mode=0o777, exist_ok=True)
    return path


def wait_seconds() -> float:
    raw = os.environ.get(WAIT_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_WAIT_S
    except ValueError:
        raise MeasurementLockTimeout(f"{WAIT_ENV}={raw!r} is not a number of seconds: unset it or give e.g. "
                                     f"{WAIT_ENV}=600") from None


@dataclass
class MeasurementLock:
    """The lock of one target.  `acquire` before a test, `release` after it.

    Example:
    | lock = MeasurementLock.for_target("http://127.0.0.1:8001")
    | lock.acquire(exclusive=True, holder="Sustained Performance / Every Round ...")
    | ...  # measure
    | lock.release()
    """

    path: Path
    _main: IO[str] | None = field(default=None, repr=False)
    _intent: IO[str] | None = field(default=None, repr=False)
    exclusive: bool = False

    @classmethod
    def for_target(cls, target: str, directory: Path | None = None) -> MeasurementLock:
        key = hashlib.sha256(target.encode()).hexdigest()[:16]
        return cls((directory or lock_dir()) / f"{key}.lock")

    @property
    def held(self) -> bool:
        return self._main is not None

    def acquire(self, *, exclusive: bool, holder: str, timeout: float | None = None) -> float:
        """Take the lock (exclusive or shared); returns the seconds spent waiting."""
        if self.held:
            self.release()
        timeout = wait_seconds() if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        intent = self._open(".intent")
        main = self._open("")
        try:
            if exclusive:
                self._take(intent, fcntl.LOCK_EX, deadline, holder, "exclusive", self._read_holder)
                self._write_holder(holder)  # from now on, whoever waits is waiting for us
                self._take(main, fcntl.LOCK_EX, deadline, holder, "exclusive",
                           lambda: "the tests already running on it")
            else:
                # passing through the intent lock is what lets a waiting exclusive holder go first
                self._take(intent, fcntl.LOCK_SH, deadline, holder, "shared", self._read_holder)
                self._take(main, fcntl.LOCK_SH, deadline, holder, "shared", self._read_holder)
                fcntl.flock(intent, fcntl.LOCK_UN)
        except BaseException:
            intent.close()
            main.close()
            raise
        self._main, self.exclusive = main, exclusive
        if exclusive:
            self._intent = intent
        else:
            intent.close()
        return time.monotonic() - started

    def release(self) -> None:
        for handle in (self._main, self._intent):
            if handle is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                finally:
                    handle.close()
        self._main = self._intent = None
        self.exclusive = False

    def _open(self, suffix: str) -> IO[str]:
        path = self.path.with_name(self.path.name + suffix)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        return os.fdopen(fd, "r+")

    def _take(self, handle: IO[str], mode: int, deadline: float, holder: str, kind: str,
              whom: Callable[[], str]) -> None:
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise MeasurementLockTimeout(
                        f"{holder} waited too long for its {kind} turn on the platform "
                        f"(held by {whom()}): raise {WAIT_ENV} (seconds) or run fewer "
                        "processes against this target") from None
                time.sleep(POLL_S)

    def _write_holder(self, holder: str) -> None:
        self.path.with_name(self.path.name + ".holder").write_text(f"{holder} (pid {os.getpid()})")

    def _read_holder(self) -> str:
        try:
            return self.path.with_name(self.path.name + ".holder").read_text() or "a performance test"
        except OSError:
            return "a performance test"

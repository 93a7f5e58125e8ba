"""The one poll-until loop: observe until a condition holds or the timeout passes.

Every "wait for the server to settle" check (session records, released connections,
stale sessions) polls the same way: look, judge, sleep ``interval``, and on timeout
fail with a message built from the *last* observation - what was awaited and what
was there instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from .errors import CrosstalkError

T = TypeVar("T")
INTERVAL_S = 0.1


def poll_until(observe: Callable[[], T], done: Callable[[T], bool], timeout: float,
               interval: float = INTERVAL_S) -> tuple[T, bool]:
    """Call ``observe`` until ``done(observation)`` or ``timeout`` seconds passed (at least once).

    Returns the last observation and whether it was done.

    Example: ``keys, ok = poll_until(lambda: scan(pattern), lambda keys: not keys, 5.0)``
    """
    deadline = time.monotonic() + max(float(timeout), 0.0)
    while True:
        seen = observe()
        if done(seen):
            return seen, True
        if time.monotonic() >= deadline:
            return seen, False
        time.sleep(interval)


def wait_until(observe: Callable[[], T], done: Callable[[T], bool], timeout: float,
               message: Callable[[T], str], interval: float = INTERVAL_S) -> T:
    """Like :func:`poll_until`, but raise :class:`CrosstalkError` with ``message(last)`` on timeout.

    Example: ``wait_until(lambda: count(), lambda n: n == 0, 5.0, lambda n: f"{n} sessions left after 5 s")``
    """
    seen, ok = poll_until(observe, done, timeout, interval)
    if not ok:
        raise CrosstalkError(message(seen))
    return seen

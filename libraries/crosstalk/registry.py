"""One registry of everything the libraries open: sockets, pools, scratch databases.

Every library registers what it opens (:func:`register`) and the one thing it
closes it with; the registry then answers two questions no single library can:

* which users hold an open WebSocket *right now*, whichever library opened it
  (:func:`open_user_ids`) - the isolation oracle's "a session outlives its
  connection" rule asks this, so sockets of Load, Races or Security count too;
* what a test or a suite left open (:class:`Cleanup`, a library listener): at the
  end of each test everything the test opened (in its setup, body or teardown) and
  still open is closed, whatever its teardown did, and reported in one line (the
  leak report); what a suite opened outside its tests (its setup: deliberately
  scoped to the suite) lives until the end of that suite and is closed then.

It is process-wide and thread-safe (the engine loop registers from its own
thread); it never calls Robot's logger itself except from the listener.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robot.api import logger

WEBSOCKET, POOL, SCRATCH_DB, STORE = "websocket", "connection pool", "scratch database", "store connection"


@dataclass
class Entry:
    """One open resource: who opened it, for which user, and how to close it."""

    seq: int
    owner: str
    kind: str
    label: str
    user_id: str | None
    is_open: Callable[[], bool]
    close: Callable[[], Any]

    def __str__(self) -> str:
        return f"{self.label} ({self.owner} {self.kind})"


class Registry:
    """The process-wide registry; use the module-level functions.

    Example:
        | registry.register(ws, owner="CrosstalkRaces", kind=WEBSOCKET, label="alice#race",
        |                   user_id=user.user_id, is_open=lambda: not closed, close=ws.close)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, Entry] = {}
        self._seq = itertools.count(1)
        self._last = 0
        self._markers: dict[str, int] = {}
        self._ended: set[str] = set()
        self._suites: list[str] = []  # suites started and not ended yet, innermost last

    def register(self, resource: object, *, owner: str, kind: str, label: str, user_id: str | None,
                 is_open: Callable[[], bool], close: Callable[[], Any]) -> None:
        with self._lock:
            self._last = next(self._seq)
            self._entries[id(resource)] = Entry(self._last, owner, kind, label, user_id, is_open, close)

    def unregister(self, resource: object) -> None:
        with self._lock:
            self._entries.pop(id(resource), None)

    def open_entries(self, kind: str | None = None, since: int = 0) -> list[Entry]:
        with self._lock:
            entries = list(self._entries.values())
        found = []
        for entry in entries:
            if entry.seq < since or (kind is not None and entry.kind != kind):
                continue
            if entry.is_open():
                found.append(entry)
            else:
                self._drop(entry)
        return found

    def keep_for_suite(self, resource: object) -> None:
        """Let ``resource`` (opened in a test) live until the end of the current suite, as if the suite
        setup had opened it: for what a test makes once on behalf of its whole suite (a load run made
        on first use and shared by the suite's later tests)."""
        with self._lock:
            entry = self._entries.get(id(resource))
            suite = next((self._markers[s] for s in reversed(self._suites) if s in self._markers), None)
            if entry is not None and suite is not None:
                entry.seq = suite

    def open_user_ids(self) -> set[str]:
        """Users with an open WebSocket, opened by any library."""
        return {e.user_id for e in self.open_entries(WEBSOCKET) if e.user_id}

    def _drop(self, entry: Entry) -> None:
        with self._lock:
            for key, value in list(self._entries.items()):
                if value is entry:
                    del self._entries[key]

    # ------------------------------------------------------------ test and suite lifecycle
    def start_suite(self, suite_id: str) -> None:
        self._start(suite_id)
        with self._lock:
            if suite_id not in self._suites:
                self._suites.append(suite_id)

    def end_suite(self, suite_id: str, name: str) -> str:
        """Close what was opened since ``suite_id`` started (everything, if its start was not seen);
        returns the leak report, or an empty string when nothing was left open."""
        with self._lock:
            if suite_id in self._suites:
                self._suites.remove(suite_id)
        return self._end(suite_id, "Suite", name)

    def start_test(self, test_id: str) -> None:
        self._start(test_id)

    def end_test(self, test_id: str, name: str) -> str:
        """Close what was opened since test ``test_id`` started (its setup, body and teardown);
        returns the leak report, or an empty string when the test closed everything it opened."""
        return self._end(test_id, "Test", name)

    def _start(self, scope_id: str) -> None:
        with self._lock:
            if scope_id not in self._markers:
                # a number of its own, so what is kept for a suite sorts before its tests' markers
                self._last = next(self._seq)
                self._markers[scope_id] = self._last
            self._ended.discard(scope_id)

    def _end(self, scope_id: str, what: str, name: str) -> str:
        with self._lock:
            if scope_id in self._ended:
                return ""  # another listener of the same test or suite closed and reported already
            self._ended.add(scope_id)
            since = self._markers.pop(scope_id, 0)
        left = self.open_entries(since=since)
        failures = []
        for entry in left:
            try:
                entry.close()
            except Exception as exc:  # a close that fails must not hide the others
                failures.append(f"{entry.label}: {type(exc).__name__}: {exc}")
            self._drop(entry)
        return leak_report(name, left, failures, what=what)


def leak_report(scope: str, left: list[Entry], failures: list[str] | None = None, what: str = "Suite") -> str:
    """One line naming what a test or suite left open (and what could not be closed)."""
    if not left:
        return ""
    shown = ", ".join(str(e) for e in left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
    line = (f"{what} '{scope}' left {len(left)} resource(s) open after its teardown; Crosstalk closed them: "
            f"{shown}")
    if failures:
        line += f"; closing failed for {'; '.join(failures[:3])}"
    return line


REGISTRY = Registry()
register = REGISTRY.register
unregister = REGISTRY.unregister
keep_for_suite = REGISTRY.keep_for_suite
open_user_ids = REGISTRY.open_user_ids


class Cleanup:
    """Library listener: at the end of each test, and of each suite, closes what it left open and warns once.

    What a test opened is closed when the test ends; what a suite opened outside its tests
    (in its setup) when the suite ends.  Every library that opens something declares it:
    ``@library(..., listener=Cleanup())``.  Several libraries listening to the same test or
    suite close and report once.

    Example:
        | @library(scope="SUITE", version=VERSION, auto_keywords=False, listener=Cleanup())
    """

    ROBOT_LISTENER_API_VERSION = 3

    def start_suite(self, data: Any, result: Any) -> None:
        REGISTRY.start_suite(data.id)

    def end_suite(self, data: Any, result: Any) -> None:
        report = REGISTRY.end_suite(data.id, data.name)
        if report:
            logger.warn(report)

    def start_test(self, data: Any, result: Any) -> None:
        REGISTRY.start_test(data.id)

    def end_test(self, data: Any, result: Any) -> None:
        report = REGISTRY.end_test(data.id, data.name)
        if report:
            logger.warn(report)

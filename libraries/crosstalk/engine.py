"""The process-wide asyncio engine: one event loop in one daemon thread.

Robot Framework's own event loop only turns while an ``async def`` keyword
runs, so sockets served by it would stop reading between keywords and frames
would be time-stamped late.  This loop runs all the time.

Two ways to use it:

* from keyword code (Robot's main thread): ``get_engine().run(coro, timeout)``
  blocks until the coroutine finishes and returns its result or raises its
  exception; on timeout the coroutine is cancelled and ``TimeoutError`` raised.
* from other coroutines already on the engine loop (e.g. a load generator):
  ``await`` the async API of :mod:`crosstalk.connection` directly, and use
  ``get_engine().loop`` / ``spawn`` to start background tasks.

A load generator on the engine loop, for example::

    from crosstalk.connection import UserConnection, gather_strict
    from crosstalk.engine import get_engine

    async def one_user(user, url):
        connection = await UserConnection(user, f"{user.label}#load", url).open(user.access_token)
        connection.listeners.append(recorder)          # sees every Frame as it arrives
        run = await connection.send_message("hello")   # RunHandle: sent_monotonic, events, ...
        await connection.wait_for_run(run, timeout=30)  # AssertionError with a clear message
        await connection.close()
        return run.time_to_first_event, run.time_to_done

    results = get_engine().run(gather_strict(one_user(u, ws_url) for u in users), timeout=120)

The engine never logs through ``robot.api.logger`` (it drops messages from
other threads); it collects, the keywords log.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop (installed with uvicorn[standard]) cuts the generator's CPU per message by
    about 40 %; ``CROSSTALK_LOOP=asyncio`` keeps the standard loop (for comparisons)."""
    if os.environ.get("CROSSTALK_LOOP", "uvloop") != "asyncio":
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.new_event_loop()
    return asyncio.new_event_loop()

T = TypeVar("T")

_lock = threading.Lock()
_engine: Engine | None = None


def _seconds(timeout: float | timedelta | None) -> float | None:
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    return timeout


class Engine:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self, name: str = "crosstalk-engine") -> None:
        self.loop = _new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def in_engine_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the engine loop from any thread; returns a concurrent future."""
        if not self.running:
            coro.close()
            raise RuntimeError("The Crosstalk engine has been shut down.")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start a background task; call only from coroutines running on the engine loop."""
        return self.loop.create_task(coro)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | timedelta | None = None) -> T:
        """Run ``coro`` on the engine loop and block until it is done.

        On timeout the coroutine is cancelled and ``TimeoutError`` is raised;
        coroutines that enforce their own timeout (with a better message) should
        be given a slightly longer one here.
        """
        if self.in_engine_thread():
            coro.close()
            raise RuntimeError("Engine.run() called from the engine thread: await the coroutine instead.")
        future = self.submit(coro)
        try:
            return future.result(_seconds(timeout))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"engine call timed out after {_seconds(timeout)} s") from None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel every task on the loop, stop it and join the thread."""
        if not self.running:
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout + 1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


def get_engine() -> Engine:
    """The process-wide engine, started on first use."""
    global _engine
    with _lock:
        if _engine is None or not _engine.running:
            _engine = Engine()
        return _engine


def shutdown_engine() -> None:
    """Stop the process-wide engine if it was started (also runs at exit)."""
    global _engine
    with _lock:
        engine, _engine = _engine, None
    if engine is not None:
        engine.shutdown()


def run(coro: Coroutine[Any, Any, T], timeout: float | timedelta | None = None) -> T:
    """Shortcut for ``get_engine().run(coro, timeout)``."""
    return get_engine().run(coro, timeout)


atexit.register(shutdown_engine)

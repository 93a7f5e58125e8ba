"""The engine loop: runs coroutines from the caller's thread, keeps running between calls."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from crosstalk.engine import Engine, get_engine


@pytest.fixture
def engine():
    engine = Engine(name="test-engine")
    yield engine
    engine.shutdown()


def test_run_returns_result_from_engine_thread(engine):
    async def where():
        return threading.current_thread().name

    assert engine.run(where(), 5) == "test-engine"


def test_exceptions_propagate(engine):
    async def boom():
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        engine.run(boom(), 5)


def test_timeout_cancels_the_coroutine(engine):
    cancelled = threading.Event()

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match=r"timed out after 0\.1 s"):
        engine.run(slow(), 0.1)
    assert cancelled.wait(2)


def test_background_tasks_progress_between_calls(engine):
    ticks = []

    async def start():
        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        engine.spawn(ticker())

    engine.run(start(), 5)
    time.sleep(0.2)  # no engine call in flight: the loop must keep turning on its own
    assert len(ticks) >= 5


def test_run_from_engine_thread_is_refused(engine):
    async def nested():
        async def inner():
            return 1

        with pytest.raises(RuntimeError, match="await the coroutine instead"):
            engine.run(inner(), 1)
        return True

    assert engine.run(nested(), 5)


def test_shutdown_stops_the_loop_and_refuses_work():
    engine = Engine()
    engine.shutdown()
    assert not engine.running

    async def anything():
        return 1

    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit(anything())


def test_get_engine_is_a_singleton():
    assert get_engine() is get_engine()

"""The service's own threads: calls run off the event loop, results and errors come back,
calls overlap up to the pool's size, and a cancelled caller still waits for its call."""

from __future__ import annotations

import threading
from functools import partial

import pytest
import trio

from app.threads import Threads


async def test_calls_run_on_the_pools_threads_and_return_or_raise() -> None:
    threads = Threads(2, name="test")
    try:
        name = await threads.run(lambda: threading.current_thread().name)
        assert name.startswith("test-")
        assert await threads.run(divmod, 7, 2) == (3, 1)
        with pytest.raises(ZeroDivisionError):
            await threads.run(divmod, 1, 0)
    finally:
        threads.close()


async def test_calls_overlap_up_to_the_number_of_threads() -> None:
    threads = Threads(3, name="test")
    barrier = threading.Barrier(3, timeout=10)  # passes only if 3 calls run at once
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(partial(threads.run, barrier.wait))
    finally:
        threads.close()


async def test_a_cancelled_caller_waits_for_its_call_to_finish() -> None:
    threads = Threads(1, name="test")
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def slow() -> None:
        started.set()
        release.wait(10)
        finished.append(True)

    try:
        threading.Timer(0.2, release.set).start()
        with trio.CancelScope() as scope:
            scope.cancel()
            await threads.run(slow)
        assert started.is_set()
        assert finished == [True]  # the call ran to its end before the caller went on
    finally:
        threads.close()

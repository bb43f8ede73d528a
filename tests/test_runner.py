"""The process runner with real worker processes: parallelism, crashes, cancellation."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import anyio
import pytest
import trio

from app.runner import ProcessRunner
from tests import procs


async def test_two_workers_really_run_in_parallel() -> None:
    runner = ProcessRunner(2)
    results: list[tuple[float, float, int]] = []

    async def one() -> None:
        results.append(await runner.run(procs.busy, 0.5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
    (start_a, end_a, pid_a), (start_b, end_b, pid_b) = results
    assert pid_a != pid_b
    assert pid_a != os.getpid()
    # Both ran at the same time: each started before the other ended.
    assert start_a < end_b
    assert start_b < end_a


async def test_the_limiter_bounds_how_many_run_at_once() -> None:
    runner = ProcessRunner(1)
    results: list[tuple[float, float, int]] = []

    async def one() -> None:
        results.append(await runner.run(procs.busy, 0.2))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    spans = sorted((start, end) for start, end, _pid in results)
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert next_start >= end


async def test_a_crashing_worker_raises_and_the_next_call_gets_a_fresh_one() -> None:
    runner = ProcessRunner(1)
    with pytest.raises(anyio.BrokenWorkerProcess):
        await runner.run(procs.crash)
    _start, _end, pid = await runner.run(procs.busy, 0.0)
    assert pid != os.getpid()


async def test_cancelling_a_call_kills_its_worker(tmp_path: Path) -> None:
    runner = ProcessRunner(1)
    marker = tmp_path / "pid"
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run, procs.sleep_forever, str(marker))
            while not marker.exists() or not marker.read_text():
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

"""The worker pool on trio-native fakes, in virtual time: concurrency, resizing, stopping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from app.queue import JobQueue
from app.workers import WorkerPool
from tests.fakes import FakeRunner, FakeStorage, FakeStore, record
from tests.servers import make_settings


class Harness:
    def __init__(
        self,
        tmp: Path,
        size: int,
        *,
        duration_s: float = 1.0,
        job_timeout_s: float = 60.0,
        queue_size: int = 100,
    ) -> None:
        self.store = FakeStore()
        self.storage = FakeStorage()
        self.runner = FakeRunner(size, duration_s=duration_s)
        self.queue = JobQueue(queue_size)
        settings = make_settings(tmp, worker_pool_size=size, job_timeout_s=job_timeout_s)
        self.pool = WorkerPool(settings, self.store, self.storage, self.queue, self.runner)

    async def submit(self, count: int) -> list[str]:
        ids = []
        first = len(self.store.rows)
        for number in range(first, first + count):
            job_id = f"job-{number:04d}"
            await self.store.insert(record(job_id, created_at=float(number)))
            with self.queue.reserve_nowait(job_id) as slot:
                slot.put()
            ids.append(job_id)
        return ids

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(10_000):
            while not condition():
                await trio.sleep(0.01)


@asynccontextmanager
async def running(harness: Harness) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.pool.serve)
        yield harness
        harness.pool.stop()


async def test_jobs_run_concurrently_up_to_pool_size(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(Harness(tmp_path, 3)) as h:
        await h.submit(12)
        await h.wait_until(lambda: h.store.statuses()["completed"] == 12)
    assert h.runner.max_running == 3
    assert set(h.runner.calls.values()) == {1}
    # 12 jobs of 1 s on 3 workers: 4 rounds, not 12.
    assert trio.current_time() < 4.5


async def test_growing_under_load_runs_more_at_once_and_loses_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(Harness(tmp_path, 1)) as h:
        ids = await h.submit(20)
        await h.wait_until(lambda: h.store.statuses()["completed"] >= 3)
        assert h.runner.max_running == 1
        h.pool.resize(4)
        await h.wait_until(lambda: h.store.statuses()["completed"] == 20)
    assert h.runner.max_running == 4
    assert h.pool.statistics().size == 4
    assert sorted(h.runner.calls) == ids
    assert set(h.runner.calls.values()) == {1}


async def test_shrinking_under_load_finishes_running_jobs_and_loses_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(Harness(tmp_path, 4)) as h:
        ids = await h.submit(20)
        await h.wait_until(lambda: h.runner.running == 4)
        h.pool.resize(1)
        # The four running jobs are not interrupted by the shrink.
        await h.wait_until(lambda: h.store.statuses()["completed"] >= 4)
        h.runner.max_running = h.runner.running
        await h.wait_until(lambda: h.store.statuses()["completed"] == 20)
    assert h.runner.max_running == 1
    assert sorted(h.runner.calls) == ids
    assert set(h.runner.calls.values()) == {1}


async def test_resize_rejects_an_empty_pool(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        Harness(tmp_path, 2).pool.resize(0)


async def test_stop_lets_running_jobs_finish_and_leaves_queued_ones_pending(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path, 2, duration_s=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(h.pool.serve)
        await h.submit(6)
        await h.wait_until(lambda: h.runner.running == 2)
        h.pool.stop()
    # serve() returned by itself once the two running jobs were done.
    assert h.store.statuses() == {"completed": 2, "pending": 4}


async def test_cancelled_job_goes_back_to_pending(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path, 1, duration_s=100.0)
    with trio.move_on_after(10):
        async with running(h):
            await h.submit(1)
            await trio.sleep_forever()
    assert h.store.statuses() == {"pending": 1}
    assert h.store.rows["job-0000"].attempts == 1


async def test_a_job_over_the_timeout_fails_with_code_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(Harness(tmp_path, 1, duration_s=100.0, job_timeout_s=5.0)) as h:
        await h.submit(2)
        await h.wait_until(lambda: h.store.statuses()["failed"] == 2)
    row = h.store.rows["job-0001"]
    assert row.error_code == "timeout"
    assert "5 s" in (row.error_message or "")
    # Timed-out jobs free their worker: two jobs in about two timeouts.
    assert trio.current_time() < 11


async def test_requeue_queues_pending_rows_once_and_recovers_dead_claims(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path, 1, duration_s=1.0)
    await h.store.insert(record("orphan-pending"))
    dead = "some-other-host/12345/abcd"
    await h.store.insert(
        record(
            "orphan-claimed", status="processing", claimed_by=dead, lease_expires_at=0.0, attempts=1
        )
    )
    await h.store.insert(record("exhausted", attempts=5))
    # A live owner on another host: not ours to take back before its lease expires.
    assert await h.pool.requeue() == 1
    assert await h.pool.requeue() == 0  # already queued here: not queued twice
    assert h.store.rows["exhausted"].status == "failed"
    assert h.store.rows["exhausted"].error_code == "interrupted"
    await h.store.release_owner(dead)  # what an expired lease or a dead pid leads to
    assert await h.pool.requeue() == 1
    async with running(h):
        await h.wait_until(lambda: h.store.statuses()["completed"] == 2)
    assert h.runner.calls == {"orphan-pending": 1, "orphan-claimed": 1}


async def test_a_watch_registered_before_the_end_sees_it_and_leaves_nothing_behind(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path, 1)
    [job_id] = await h.submit(1)
    with h.pool.watch(job_id) as finished, h.pool.watch(job_id) as same:
        assert finished is same
        async with running(h):
            with trio.fail_after(100):
                await finished.wait()
        assert h.store.rows[job_id].status == "completed"
    assert h.pool._finished == {}
    assert not h.pool._watchers

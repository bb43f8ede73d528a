"""The shared queue's admission and wake-ups, against a store double (the PostgreSQL store
itself is tested in tests/test_postgres_store.py, the whole in tests/test_scale_out.py)."""

from __future__ import annotations

from collections import Counter
from typing import cast

import pytest
import trio
import trio.testing

from app.errors import QueueFull, TooManyQueued
from app.shared_queue import IDLE_CLAIM_S, SharedQueue
from app.store import JobRecord, SharedJobStore
from tests.fakes import record


class PendingRows:
    """The two calls the shared queue makes of its store: pending counts, and claims."""

    def __init__(self) -> None:
        self.pending: list[JobRecord] = []
        self.claims = 0

    async def pending_by_owner(self) -> dict[str | None, int]:
        await trio.lowlevel.checkpoint()
        return dict(Counter(job.owner for job in self.pending))

    async def claim_next(self, *, owner: str, lease_s: float) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        self.claims += 1
        return self.pending.pop(0) if self.pending else None


def queue_over(rows: PendingRows, capacity: int = 3) -> SharedQueue:
    return SharedQueue(cast(SharedJobStore, rows), capacity)  # the two calls it makes


async def test_admission_counts_every_nodes_pending_rows_and_this_nodes_places() -> None:
    rows = PendingRows()
    rows.pending = [record("a", owner="alice"), record("b", owner="bob")]
    queue = queue_over(rows, capacity=3)
    await queue.refresh()
    with queue.reserve_nowait("c", "alice") as slot:
        # two rows (of other nodes, say) and this place: full
        with pytest.raises(QueueFull, match="3 jobs waiting"), queue.reserve_nowait("d", "bob"):
            pass
        slot.put()
    # put, but not yet seen in the rows: still counted
    assert queue.statistics().queued == 3
    with pytest.raises(QueueFull), queue.reserve_nowait("d", "carol"):
        pass
    rows.pending.pop(0)  # a worker anywhere claimed one
    await queue.refresh()
    assert queue.statistics().queued == 1  # the put row is not in `rows`: the double's view
    with queue.reserve_nowait("d", "carol"):
        pass


async def test_a_keys_limit_counts_its_rows_and_places_only() -> None:
    rows = PendingRows()
    rows.pending = [record("a", owner="alice"), record("b", owner="alice")]
    queue = queue_over(rows, capacity=100)
    await queue.refresh()
    alice = pytest.raises(TooManyQueued, match="key 'alice' already has 2")
    with alice, queue.reserve_nowait("c", "alice", owner_limit=2):
        pass
    with queue.reserve_nowait("c", "bob", owner_limit=2), queue.reserve_nowait("d", "bob"):
        bob = pytest.raises(TooManyQueued, match="key 'bob'")
        with bob, queue.reserve_nowait("e", "bob", owner_limit=2):
            pass
    anonymous = pytest.raises(TooManyQueued, match="anonymous requests")
    first, second = (queue.reserve_nowait(i, None, owner_limit=1) for i in ("e", "f"))
    with first, anonymous, second:
        pass


async def test_idle_workers_wait_for_a_notification_after_finding_nothing() -> None:
    rows = PendingRows()
    queue = queue_over(rows)
    generation = await queue.receive()  # at start: look at once
    assert await queue.claim(generation, owner="w", lease_s=30) is None
    woken = trio.Event()

    async def worker() -> None:
        await queue.receive()
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        assert not woken.is_set()  # nothing claimable was announced: it waits
        queue.notify("imgjobs_changed")  # a status change is no job to claim
        await trio.testing.wait_all_tasks_blocked()
        assert not woken.is_set()
        rows.pending.append(record("a"))
        queue.notify("imgjobs_jobs")
        with trio.fail_after(1):
            await woken.wait()


async def test_a_notification_during_an_empty_claim_is_not_lost() -> None:
    rows = PendingRows()
    queue = queue_over(rows)
    generation = await queue.receive()
    # The claim found nothing, but a job was committed (and announced) meanwhile.
    rows.pending.append(record("a"))
    queue.notify("imgjobs_jobs")
    queue.claimed(generation, found=False)
    with trio.fail_after(1):
        again = await queue.receive()  # returns at once: the newer hint stands
    found = await queue.claim(again, owner="w", lease_s=30)
    assert found is not None
    assert found.id == "a"


async def test_a_worker_that_found_a_job_looks_again_at_once() -> None:
    rows = PendingRows()
    rows.pending = [record("a"), record("b")]
    queue = queue_over(rows)
    claimed = []
    with trio.fail_after(1):  # no notification needed while jobs are found
        for _ in range(2):
            job = await queue.claim(await queue.receive(), owner="w", lease_s=30)
            assert job is not None
            claimed.append(job.id)
    assert claimed == ["a", "b"]


async def test_idle_workers_look_on_their_own_now_and_then(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rows = PendingRows()
    queue = queue_over(rows)
    assert await queue.claim(await queue.receive(), owner="w", lease_s=30) is None
    rows.pending.append(record("a"))  # committed, its notification missed
    start = trio.current_time()
    job = await queue.claim(await queue.receive(), owner="w", lease_s=30)
    assert job is not None
    assert trio.current_time() - start == pytest.approx(IDLE_CLAIM_S)

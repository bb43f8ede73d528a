"""The job queue when several nodes share one database: the pending rows are the queue.

An API node admits a job against the pending rows of every node (a full queue answers
503, a key over MAX_QUEUED_PER_KEY 429, as with the in-memory queue), inserts its row and
is done: the database tells the worker nodes (`LISTEN/NOTIFY`), whose idle workers wake
and claim the next job themselves (`SharedJobStore.claim_next`, fair across keys). Nothing
here holds job ids, so a node that dies loses none.

Each submit reads the pending counts (one indexed query) before it reserves its place,
and counts the places this node holds meanwhile, so the bound holds on one node and is
exceeded across several only by submits admitted at the same instant.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from app.errors import QueueFull, TooManyQueued
from app.logs import log_event
from app.queue import QueueStatistics
from app.store import JobRecord, SharedJobStore

__all__ = ["SharedQueue", "SharedSlot"]

# The pending counts are re-read at most this often, and at least this often while idle.
REFRESH_S = 0.5
IDLE_REFRESH_S = 5.0
# Idle workers look for work this often even without a notification (one was missed
# while the listening connection was being re-established, say).
IDLE_CLAIM_S = 10.0


class SharedSlot:
    """A place held for one job id until its row is inserted."""

    def __init__(self, queue: SharedQueue, job_id: str, owner: str | None) -> None:
        self._queue = queue
        self.job_id = job_id
        self.owner = owner
        self.used = False

    def put(self) -> None:
        """The row is in: the job counts as pending until the next refresh."""
        assert not self.used, f"job {self.job_id} is already put"
        self.used = True
        self._queue._admitted[self.owner] += 1


class SharedQueue:
    """Admission against the shared pending rows, and wake-ups for idle workers."""

    def __init__(self, store: SharedJobStore, capacity: int, *, retry_after_s: int = 1) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._store = store
        self._pending: Counter[str | None] = Counter()  # per owner, as last read
        self._admitted: Counter[str | None] = Counter()  # put here since that read
        self._reserved: dict[str, str | None] = {}  # id -> owner, rows being written here
        self._generation = 0  # bumped by every hint that a job may be claimable
        self._looked = -1  # the generation of the last claim that found nothing
        self._wake = trio.Event()
        self._stale = trio.Event()

    # -- admission (API nodes) --

    @contextmanager
    def reserve_nowait(
        self, job_id: str, owner: str | None = None, *, owner_limit: int | None = None
    ) -> Iterator[SharedSlot]:
        """Hold a place for `job_id` during the block, as `JobQueue.reserve_nowait`."""
        if job_id in self._reserved:
            raise ValueError(f"job {job_id} is already reserved")
        if self._total() >= self.capacity:
            raise QueueFull(
                f"the job queue is full ({self.capacity} jobs waiting); retry later",
                retry_after_s=self.retry_after_s,
            )
        if owner_limit is not None and self.queued_for(owner) >= owner_limit:
            who = "anonymous requests" if owner is None else f"key {owner!r}"
            raise TooManyQueued(
                f"{who} already has {owner_limit} jobs waiting (MAX_QUEUED_PER_KEY);"
                " retry when some have started",
                retry_after_s=self.retry_after_s,
            )
        self._reserved[job_id] = owner
        slot = SharedSlot(self, job_id, owner)
        try:
            yield slot
        finally:
            del self._reserved[job_id]

    def _total(self) -> int:
        return sum(self._pending.values()) + sum(self._admitted.values()) + len(self._reserved)

    def queued_for(self, owner: str | None) -> int:
        reserved = sum(1 for who in self._reserved.values() if who == owner)
        return self._pending[owner] + self._admitted[owner] + reserved

    def free_slots(self) -> int:
        return max(self.capacity - self._total(), 0)

    def known_ids(self) -> frozenset[str]:
        return frozenset(self._reserved)

    def statistics(self) -> QueueStatistics:
        queued = sum(self._pending.values()) + sum(self._admitted.values())
        return QueueStatistics(queued=queued, reserved=len(self._reserved), capacity=self.capacity)

    # -- wake-ups (worker nodes) --

    def notify(self, channel: str) -> None:
        """A database notification: a job became claimable, or a job's status changed."""
        if channel == "imgjobs_jobs":
            self._generation += 1
            self._wake.set()
            self._wake = trio.Event()
        self._stale.set()

    async def receive(self) -> int:
        """Wait until a job may be claimable; returns the hint's generation, to hand back
        to `claimed` (an empty string would do as a job id: workers claim the next job)."""
        with trio.move_on_after(IDLE_CLAIM_S):
            while self._looked == self._generation:
                await self._wake.wait()
        if self._looked == self._generation:
            self._generation += 1  # looked for long enough without a hint: look again
        return self._generation

    def claimed(self, generation: int, *, found: bool) -> None:
        """A claim made after `receive` returned `generation`; nothing found means no job
        was claimable as of that hint, so workers wait for the next one."""
        if not found:
            self._looked = max(self._looked, generation)

    async def claim(self, generation: int, *, owner: str, lease_s: float) -> JobRecord | None:
        """Claim the next job for a worker woken at `generation`."""
        record = await self._store.claim_next(owner=owner, lease_s=lease_s)
        self.claimed(generation, found=record is not None)
        return record

    async def renew(self, *, owner: str, lease_s: float) -> int:
        """Extend the leases of the jobs `owner` (a worker pool) is running."""
        return await self._store.renew(owner=owner, lease_s=lease_s)

    async def refresh(self) -> None:
        """Read the pending counts now (a submit's admission is checked against them)."""
        pending = await self._store.pending_by_owner()
        self._pending = Counter(pending)
        self._admitted.clear()

    async def refresh_counts(self) -> None:
        """Keep the pending counts current for /health and /metrics until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log_event("queue.refresh_error", level=logging.ERROR, exc=True)
            self._stale = trio.Event()
            await trio.sleep(REFRESH_S)
            with trio.move_on_after(IDLE_REFRESH_S - REFRESH_S):
                await self._stale.wait()

"""The bounded job queue: one FIFO per API key, taken in turn, places reserved before a job exists.

Submitting reserves a place for the new id first (`reserve_nowait`), then writes the
upload and the row, then puts the id in (`Slot.put`), which cannot fail. A full queue
therefore answers 503 before anything is written, and an accepted job is never dropped
for lack of room; a key with `owner_limit` ids reserved or waiting is answered 429 the
same way. Ids reserved or waiting are known, so a sweep for pending rows never queues
one twice.

Why not a memory channel: a channel is one FIFO, so a key that puts 500 jobs makes every
other key wait behind all of them. Fairness is decided when a job is taken, not when it
is put: each owner (an API key's name, None for anonymous requests) has its own FIFO,
and `receive` takes the next id of the owner whose turn it is. An owner joins the
rotation at the back when it has a job waiting and leaves it when its FIFO empties, so
an owner's next job waits for at most one job of each other owner, however many they have.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import trio

from app.errors import QueueFull, TooManyQueued

__all__ = ["JobQueue", "QueueStatistics", "Slot"]


class QueueStatistics(msgspec.Struct, frozen=True, kw_only=True):
    queued: int
    reserved: int
    capacity: int


class Slot:
    """A place held in the queue for one job id."""

    def __init__(self, queue: JobQueue, job_id: str) -> None:
        self._queue = queue
        self.job_id = job_id
        self.used = False

    def put(self) -> None:
        """Queue the job; cannot fail, the place was kept free for it."""
        assert not self.used, f"job {self.job_id} is already put"
        self._queue._put(self.job_id)
        self.used = True


class JobQueue:
    """Job ids waiting for a worker: at most `capacity`, reservations included, taken
    round-robin across owners and first in, first out for each owner."""

    def __init__(self, capacity: int, *, retry_after_s: int = 1) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._owners: dict[str, str | None] = {}  # id -> owner, for ids reserved or waiting
        self._counts: Counter[str | None] = Counter()  # per owner, ids reserved or waiting
        # Owners with ids waiting, in the order of their turns: the first is served next.
        self._turns: OrderedDict[str | None, deque[str]] = OrderedDict()
        self._waiting = 0
        self._takers = trio.lowlevel.ParkingLot()

    @contextmanager
    def reserve_nowait(
        self, job_id: str, owner: str | None = None, *, owner_limit: int | None = None
    ) -> Iterator[Slot]:
        """Hold a place for `job_id` of `owner` during the block; freed at exit unless put.

        Raises `QueueFull` when the queue is full, then `TooManyQueued` when `owner` has
        `owner_limit` ids reserved or waiting already.
        """
        if job_id in self._owners:
            raise ValueError(f"job {job_id} is already queued")
        if len(self._owners) >= self.capacity:
            raise QueueFull(
                f"the job queue is full ({self.capacity} jobs waiting); retry later",
                retry_after_s=self.retry_after_s,
            )
        if owner_limit is not None and self._counts[owner] >= owner_limit:
            who = "anonymous requests" if owner is None else f"key {owner!r}"
            raise TooManyQueued(
                f"{who} already has {owner_limit} jobs waiting (MAX_QUEUED_PER_KEY);"
                " retry when some have started",
                retry_after_s=self.retry_after_s,
            )
        self._owners[job_id] = owner
        self._counts[owner] += 1
        slot = Slot(self, job_id)
        try:
            yield slot
        finally:
            if not slot.used:
                self._forget(job_id)

    def _put(self, job_id: str) -> None:
        owner = self._owners[job_id]
        waiting = self._turns.get(owner)
        if waiting is None:
            waiting = self._turns[owner] = deque()  # joins the rotation at the back
        waiting.append(job_id)
        self._waiting += 1
        self._takers.unpark()

    async def receive(self) -> str:
        """The next job id, waiting until there is one; the id is no longer known.

        Owners are served in turn, each owner's ids in the order they were put. If
        cancelled, no id is taken.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._turns:
            await self._takers.park()
        job_id = self._take()
        # A schedule point that cannot be cancelled: the id is out of the queue now.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return job_id

    def _take(self) -> str:
        owner, waiting = next(iter(self._turns.items()))
        job_id = waiting.popleft()
        if waiting:
            self._turns.move_to_end(owner)
        else:
            del self._turns[owner]
        self._waiting -= 1
        self._forget(job_id)
        return job_id

    def _forget(self, job_id: str) -> None:
        owner = self._owners.pop(job_id)
        self._counts[owner] -= 1
        if self._counts[owner] == 0:
            del self._counts[owner]

    def free_slots(self) -> int:
        return self.capacity - len(self._owners)

    def queued_for(self, owner: str | None) -> int:
        """Ids of `owner` reserved or waiting."""
        return self._counts[owner]

    def known_ids(self) -> frozenset[str]:
        """Ids reserved or waiting: a sweep must not queue these again."""
        return frozenset(self._owners)

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            queued=self._waiting,
            reserved=len(self._owners) - self._waiting,
            capacity=self.capacity,
        )

"""The bounded job queue: a trio memory channel with places reserved before a job exists.

Submitting reserves a place for the new id first (`reserve_nowait`), then writes the
upload and the row, then puts the id in (`Slot.put`), which cannot fail. A full queue
therefore answers 503 before anything is written, and an accepted job is never dropped
for lack of room. Ids reserved or waiting are known, so a sweep for pending rows never
queues one twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import trio

from app.errors import QueueFull

__all__ = ["JobQueue", "QueueStatistics", "Slot"]


class QueueStatistics(msgspec.Struct, frozen=True, kw_only=True):
    queued: int
    reserved: int
    capacity: int


class Slot:
    """A place held in the queue for one job id."""

    def __init__(self, send: trio.MemorySendChannel[str], job_id: str) -> None:
        self._send = send
        self.job_id = job_id
        self.used = False

    def put(self) -> None:
        """Queue the job; cannot raise `WouldBlock`, the place was kept free for it."""
        self._send.send_nowait(self.job_id)
        self.used = True


class JobQueue:
    """Job ids waiting for a worker: at most `capacity`, reservations included."""

    def __init__(self, capacity: int, *, retry_after_s: int = 1) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._send, self._receive = trio.open_memory_channel[str](capacity)
        self._ids: set[str] = set()  # reserved or waiting in the channel

    @contextmanager
    def reserve_nowait(self, job_id: str) -> Iterator[Slot]:
        """Hold a place for `job_id` during the block; freed at exit unless put."""
        if job_id in self._ids:
            raise ValueError(f"job {job_id} is already queued")
        if len(self._ids) >= self.capacity:
            raise QueueFull(
                f"the job queue is full ({self.capacity} jobs waiting); retry later",
                retry_after_s=self.retry_after_s,
            )
        self._ids.add(job_id)
        slot = Slot(self._send, job_id)
        try:
            yield slot
        finally:
            if not slot.used:
                self._ids.discard(job_id)

    def free_slots(self) -> int:
        return self.capacity - len(self._ids)

    def receiver(self) -> trio.MemoryReceiveChannel[str]:
        """A receive channel for one consumer, which calls `taken` for every id it gets."""
        return self._receive.clone()

    def taken(self, job_id: str) -> None:
        self._ids.discard(job_id)

    def known_ids(self) -> frozenset[str]:
        """Ids reserved or waiting: a sweep must not queue these again."""
        return frozenset(self._ids)

    def statistics(self) -> QueueStatistics:
        queued = self._send.statistics().current_buffer_used
        return QueueStatistics(
            queued=queued, reserved=len(self._ids) - queued, capacity=self.capacity
        )

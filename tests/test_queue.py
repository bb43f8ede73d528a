"""The bounded job queue: reservations, capacity, and no double queueing."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from app.errors import QueueFull
from app.queue import JobQueue


async def test_reserved_places_count_against_the_capacity() -> None:
    queue = JobQueue(2, retry_after_s=4)
    with queue.reserve_nowait("a") as first, queue.reserve_nowait("b"):
        with pytest.raises(QueueFull) as caught, queue.reserve_nowait("c"):
            pass
        assert caught.value.headers() == {"Retry-After": "4"}
        first.put()
        assert queue.statistics().queued == 1
        assert queue.statistics().reserved == 1
    # "b" was never put: its place is free again.
    assert queue.free_slots() == 1
    assert queue.known_ids() == {"a"}


async def test_a_put_cannot_fail_and_consumers_get_ids_in_order() -> None:
    queue = JobQueue(3)
    for job_id in "xyz":
        with queue.reserve_nowait(job_id) as slot:
            slot.put()
    got = [await queue.receive() for _ in range(3)]
    assert got == ["x", "y", "z"]
    assert queue.free_slots() == 3
    assert queue.known_ids() == frozenset()


async def test_an_id_is_never_queued_twice() -> None:
    queue = JobQueue(3)
    with queue.reserve_nowait("a") as slot:
        slot.put()
    with pytest.raises(ValueError, match="already queued"), queue.reserve_nowait("a"):
        pass


async def test_an_abandoned_reservation_frees_its_place_on_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queue = JobQueue(1)
    with pytest.raises(RuntimeError), queue.reserve_nowait("a"):
        raise RuntimeError("upload failed")
    assert queue.free_slots() == 1
    with trio.move_on_after(1) as waiting:
        await queue.receive()
    assert waiting.cancelled_caught  # nothing was put, so there was nothing to take
    assert queue.statistics().queued == 0

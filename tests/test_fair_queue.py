"""The job queue across API keys: owners taken in turn, each in order, each under its cap."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from app.errors import QueueFull, TooManyQueued
from app.queue import JobQueue


def put(queue: JobQueue, owner: str | None, *job_ids: str) -> None:
    for job_id in job_ids:
        with queue.reserve_nowait(job_id, owner) as slot:
            slot.put()


async def take(queue: JobQueue, count: int) -> list[str]:
    return [await queue.receive() for _ in range(count)]


async def take_into(
    queue: JobQueue,
    got: list[str],
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One `receive` in a cancel scope handed to the caller; what it gets goes in `got`."""
    with trio.CancelScope() as scope:
        task_status.started(scope)
        got.append(await queue.receive())


async def test_a_key_with_one_job_waits_for_at_most_one_of_a_busy_keys() -> None:
    queue = JobQueue(1000)
    put(queue, "alice", *(f"a{n:03d}" for n in range(500)))
    assert await take(queue, 3) == ["a000", "a001", "a002"]
    put(queue, "bob", "b")
    next_two = await take(queue, 2)
    assert "b" in next_two
    rest = await take(queue, 496)
    # Alice's jobs still go in the order she put them, none lost.
    assert [j for j in next_two + rest if j != "b"] == [f"a{n:03d}" for n in range(3, 500)]


async def test_three_keys_interleave() -> None:
    queue = JobQueue(20)
    put(queue, "alice", "a1", "a2", "a3")
    put(queue, "bob", "b1", "b2", "b3")
    put(queue, None, "n1", "n2", "n3")  # anonymous requests are a key like any other
    assert await take(queue, 9) == ["a1", "b1", "n1", "a2", "b2", "n2", "a3", "b3", "n3"]


async def test_each_keys_jobs_are_taken_in_the_order_they_were_put() -> None:
    queue = JobQueue(20)
    for job_id in ["a1", "b1", "a2", "a3", "b2", "c1", "a4", "b3", "c2"]:
        put(queue, job_id[0], job_id)
    got = await take(queue, 9)
    for owner in "abc":
        mine = [job_id for job_id in got if job_id[0] == owner]
        assert mine == sorted(mine)


async def test_a_key_whose_jobs_ran_out_rejoins_at_the_back() -> None:
    queue = JobQueue(20)
    put(queue, "alice", "a1")
    put(queue, "bob", "b1", "b2")
    assert await take(queue, 2) == ["a1", "b1"]  # alice has nothing left: out of the turn
    put(queue, "alice", "a2")
    put(queue, "carol", "c1")
    assert await take(queue, 3) == ["b2", "a2", "c1"]


async def test_a_key_at_its_cap_gets_429_until_one_of_its_jobs_is_taken() -> None:
    queue = JobQueue(10, retry_after_s=7)
    with queue.reserve_nowait("a1", "alice", owner_limit=2) as slot:
        slot.put()
    with queue.reserve_nowait("a2", "alice", owner_limit=2):  # a reservation counts too
        assert queue.queued_for("alice") == 2
        with (
            pytest.raises(TooManyQueued) as caught,
            queue.reserve_nowait("a3", "alice", owner_limit=2),
        ):
            pass
        error = caught.value
        assert error.status == 429
        assert error.code == "too_many_queued"
        assert error.headers() == {"Retry-After": "7"}
        assert "'alice'" in error.message
        assert "2 jobs" in error.message
        # Other keys, and the same key without a cap, are not held back.
        with queue.reserve_nowait("b1", "bob", owner_limit=2):
            pass
        with queue.reserve_nowait("a4", "alice"):
            pass
    # "a2" was given up: alice is down to "a1", waiting; once it is taken she may queue again.
    assert queue.queued_for("alice") == 1
    with pytest.raises(TooManyQueued), queue.reserve_nowait("a3", "alice", owner_limit=1):
        pass
    assert await queue.receive() == "a1"
    with queue.reserve_nowait("a3", "alice", owner_limit=1) as slot:
        slot.put()
    assert queue.queued_for("alice") == 1


async def test_a_taken_job_frees_its_keys_share() -> None:
    queue = JobQueue(10)
    put(queue, None, "n1")
    with (
        pytest.raises(TooManyQueued, match="anonymous"),
        queue.reserve_nowait("n2", None, owner_limit=1),
    ):
        pass
    assert await queue.receive() == "n1"
    assert queue.queued_for(None) == 0
    with queue.reserve_nowait("n2", None, owner_limit=1) as slot:
        slot.put()
    assert queue.queued_for(None) == 1


async def test_a_full_queue_answers_503_before_any_key_cap() -> None:
    queue = JobQueue(2)
    put(queue, "alice", "a1", "a2")
    with pytest.raises(QueueFull), queue.reserve_nowait("a3", "alice", owner_limit=2):
        pass


async def test_a_reservation_given_up_frees_its_keys_share() -> None:
    queue = JobQueue(10)
    with queue.reserve_nowait("a1", "alice", owner_limit=1):
        pass
    with pytest.raises(RuntimeError), queue.reserve_nowait("a2", "alice", owner_limit=1):
        raise RuntimeError("upload failed")
    assert queue.queued_for("alice") == 0
    assert queue.known_ids() == frozenset()
    with queue.reserve_nowait("a3", "alice", owner_limit=1) as slot:
        slot.put()
    assert await queue.receive() == "a3"


async def test_a_waiting_receive_gets_the_next_job_put() -> None:
    queue = JobQueue(10)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_into, queue, got)
        nursery.start_soon(take_into, queue, got)
        await trio.testing.wait_all_tasks_blocked()
        put(queue, "alice", "a1")
        put(queue, "bob", "b1")
    assert sorted(got) == ["a1", "b1"]
    assert queue.statistics().queued == 0


async def test_a_receive_cancelled_while_waiting_takes_nothing() -> None:
    queue = JobQueue(10)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        scope = await nursery.start(take_into, queue, got)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    put(queue, "alice", "a1")
    assert got == []
    assert await queue.receive() == "a1"


async def test_a_receive_cancelled_before_it_starts_leaves_the_job_queued() -> None:
    queue = JobQueue(10)
    put(queue, "alice", "a1")
    with trio.CancelScope() as scope:
        scope.cancel()
        await queue.receive()
    assert scope.cancelled_caught
    assert queue.known_ids() == {"a1"}
    assert await queue.receive() == "a1"


async def test_a_receive_cancelled_just_after_a_put_woke_it_loses_no_job() -> None:
    queue = JobQueue(10)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        scope = await nursery.start(take_into, queue, got)
        await trio.testing.wait_all_tasks_blocked()
        put(queue, "alice", "a1")  # wakes the receive...
        scope.cancel()  # ...which is cancelled before it runs again
    left = await take(queue, queue.statistics().queued)
    assert got + left == ["a1"]


async def test_known_ids_free_slots_and_statistics_across_keys() -> None:
    queue = JobQueue(5)
    put(queue, "alice", "a1", "a2")
    put(queue, "bob", "b1")
    with queue.reserve_nowait("c1", "carol"):
        assert queue.known_ids() == {"a1", "a2", "b1", "c1"}
        assert queue.free_slots() == 1
        assert queue.statistics().queued == 3
        assert queue.statistics().reserved == 1
        assert queue.statistics().capacity == 5
        assert [queue.queued_for(k) for k in ("alice", "bob", "carol", None)] == [2, 1, 1, 0]
    assert await take(queue, 2) == ["a1", "b1"]
    assert queue.known_ids() == {"a2"}
    assert queue.free_slots() == 4
    assert queue.statistics().queued == 1
    assert queue.statistics().reserved == 0
    with pytest.raises(ValueError, match="already queued"), queue.reserve_nowait("a2", "bob"):
        pass

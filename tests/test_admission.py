"""The upload gate: bodies stream a few at a time, in arrival order, and nothing holds it."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypercorn.typing import ASGIReceiveEvent, ASGISendEvent, HTTPRequestEvent

from app.admission import UploadGate

IDLE_S = 0.1
MAX_WAIT_S = 2.0


def chunk(more: bool = True) -> HTTPRequestEvent:
    return {"type": "http.request", "body": b"x", "more_body": more}


async def discard(message: ASGISendEvent) -> None:
    pass


def gate(places: int = 1) -> UploadGate:
    return UploadGate(places, max_wait_s=MAX_WAIT_S, idle_s=IDLE_S)


def body(
    *arrived: ASGIReceiveEvent,
) -> tuple[trio.MemorySendChannel[ASGIReceiveEvent], trio.MemoryReceiveChannel[ASGIReceiveEvent]]:
    """A request body as hypercorn queues it, with the messages that have `arrived` so far."""
    send, receive = trio.open_memory_channel[ASGIReceiveEvent](10)
    for message in arrived:
        send.send_nowait(message)
    return send, receive


async def test_a_body_waits_until_the_one_streaming_has_all_come(
    mock_clock: trio.testing.MockClock,  # time stands still: no pause is long enough
) -> None:
    uploads = gate(places=1)
    send_a, receive_a = body()
    send_b, receive_b = body()
    order: list[str] = []

    async def upload(name: str, receive: trio.MemoryReceiveChannel[ASGIReceiveEvent]) -> None:
        async with uploads.admit(receive.receive, discard) as (gated, _):
            while (await gated()).get("more_body", False):
                order.append(name)
            order.append(f"{name} done")

    async with trio.open_nursery() as nursery:
        send_a.send_nowait(chunk())
        nursery.start_soon(upload, "a", receive_a)
        await trio.testing.wait_all_tasks_blocked()
        send_b.send_nowait(chunk(more=False))
        nursery.start_soon(upload, "b", receive_b)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a"]  # b's body is there, but a is still streaming
        send_a.send_nowait(chunk())
        send_a.send_nowait(chunk(more=False))
    assert order == ["a", "a", "a done", "b done"]


async def test_two_places_let_two_bodies_stream_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uploads = gate(places=2)
    _, receive_a = body(chunk())
    _, receive_b = body(chunk())
    async with (
        uploads.admit(receive_a.receive, discard) as (gated_a, _),
        uploads.admit(receive_b.receive, discard) as (gated_b, _),
    ):
        with trio.fail_after(IDLE_S / 2):  # virtual time: no waiting for a place at all
            await gated_a()
            await gated_b()


async def test_a_paused_client_gives_its_place_up(autojump_clock: trio.testing.MockClock) -> None:
    uploads = gate(places=1)
    send_a, receive_a = body(chunk())
    _, receive_b = body(chunk(more=False))
    b_done_at: list[float] = []

    async def paused_upload() -> None:
        async with uploads.admit(receive_a.receive, discard) as (gated, _):
            await gated()
            await gated()  # the client sends nothing more for a while

    async def next_upload() -> None:
        async with uploads.admit(receive_b.receive, discard) as (gated, _):
            await gated()
            b_done_at.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(paused_upload)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(next_upload)
        await trio.sleep(1.0)
        send_a.send_nowait(chunk(more=False))  # the paused client's body still arrives
    assert len(b_done_at) == 1
    assert b_done_at[0] - start < 2 * IDLE_S


async def test_no_body_waits_for_a_place_longer_than_max_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    uploads = gate(places=1)
    _, receive_a = body(chunk())
    _, receive_b = body(chunk(more=False))
    async with uploads.admit(receive_a.receive, discard) as (holder, _):
        await holder()  # holds the place: its app is not asking for more yet
        start = trio.current_time()
        async with uploads.admit(receive_b.receive, discard) as (waiting, _):
            with trio.fail_after(MAX_WAIT_S + 1):
                await waiting()
        assert trio.current_time() - start == MAX_WAIT_S


async def test_leaving_early_gives_the_place_back(autojump_clock: trio.testing.MockClock) -> None:
    uploads = gate(places=1)
    _, receive_a = body(chunk())
    _, receive_b = body(chunk(more=False))
    async with uploads.admit(receive_a.receive, discard) as (answered_early, _):
        await answered_early()  # e.g. refused after the first chunk: the rest is never read
    start = trio.current_time()
    async with uploads.admit(receive_b.receive, discard) as (gated, _):
        await gated()
    assert trio.current_time() == start


async def test_a_body_answered_before_it_was_read_stops_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A 503 (queue full) is sent without reading the body; hypercorn closes that connection
    # only once the app has taken what it queued, so the body must not wait for a place.
    uploads = gate(places=1)
    _, receive_a = body(chunk())
    _, receive_b = body(chunk())
    async with uploads.admit(receive_a.receive, discard) as (holder, _):
        await holder()
        start = trio.current_time()
        async with (
            uploads.admit(receive_b.receive, discard) as (refused, answer),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(refused)  # Quart's reader, waiting for a place
            await trio.testing.wait_all_tasks_blocked()
            await answer({"type": "http.response.start", "status": 503, "headers": []})
        assert trio.current_time() == start


def test_a_gate_needs_a_place() -> None:
    with pytest.raises(ValueError, match="at least one place"):
        UploadGate(0, max_wait_s=MAX_WAIT_S, idle_s=IDLE_S)

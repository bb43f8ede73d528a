"""Admission of upload bodies: a few are received at a time, in arrival order.

Fifty clients uploading at once would otherwise be read interleaved: each upload is
complete only near the end of the burst, the worker pool waits idle for the first one,
and the event loop pays the per-read cost of HTTP parsing, ASGI messages and Quart's body
on fifty trickles instead of a few full streams. The gate lets a few request bodies
stream at a time; the others wait, and their bytes stay in the kernel's socket buffers
(hypercorn reads only `max_app_queue_size` messages ahead of the app).

Nothing can hold the gate shut: a client that pauses gives its place up, and no body
waits for a place longer than `max_wait_s`, after which it streams like any other. A
request answered before its body was read (503 when the queue is full, 413, 415) stops
waiting at once: hypercorn closes such a connection only after the app has taken the
messages it queued, so a body held back past its answer would hold the connection too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
)

__all__ = ["UploadGate"]


class UploadGate:
    """At most `places` request bodies streaming through the gate at once."""

    def __init__(self, places: int, *, max_wait_s: float, idle_s: float) -> None:
        if places < 1:
            raise ValueError("an upload gate needs at least one place")
        self._places = trio.Semaphore(places)
        self._max_wait_s = max_wait_s
        self._idle_s = idle_s

    @asynccontextmanager
    async def admit(
        self, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> AsyncIterator[tuple[ASGIReceiveCallable, ASGISendCallable]]:
        """A `receive` that first waits for a place, and the `send` to answer with. The
        place is given back when the body has all come, when the client pauses for
        `idle_s`, or at the latest on exit; the wait ends when the answer starts."""
        body = _GatedBody(self._places, receive, max_wait_s=self._max_wait_s, idle_s=self._idle_s)

        async def answer(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                body.answered()
            await send(message)

        try:
            yield body.receive, answer
        finally:
            body.leave()


class _GatedBody:
    def __init__(
        self,
        places: trio.Semaphore,
        receive: ASGIReceiveCallable,
        *,
        max_wait_s: float,
        idle_s: float,
    ) -> None:
        self._places = places
        self._receive = receive
        self._max_wait_s = max_wait_s
        self._idle_s = idle_s
        self._waited = False
        self._holding = False
        self._waiting = trio.CancelScope()

    def answered(self) -> None:
        """The answer has started: the body, if still waiting, need not wait any more."""
        self._waiting.cancel()

    async def receive(self) -> ASGIReceiveEvent:
        if not self._waited:
            self._waited = True
            with self._waiting, trio.move_on_after(self._max_wait_s):
                await self._places.acquire()
                self._holding = True
        if not self._holding:
            return await self._receive()
        # Hypercorn's receive is a memory channel's: cancelling it loses no message.
        with trio.move_on_after(self._idle_s):
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                self.leave()
            return message
        self.leave()  # a slow client: let the next upload stream meanwhile
        return await self._receive()

    def leave(self) -> None:
        if self._holding:
            self._holding = False
            self._places.release()

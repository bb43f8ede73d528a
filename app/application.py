"""The Quart-Trio application class and the typed accessor to the running service."""

from __future__ import annotations

from typing import cast

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart import current_app
from quart_trio import QuartTrio
from quart_trio.wrappers.response import TrioFileBody, TrioResponse

from app.admission import UploadGate
from app.service import Service
from app.settings import Settings

__all__ = ["ImgJobsApp", "current_service"]

# A download is read from its file this much at a time, each read a hop to a thread.
DOWNLOAD_READ_BYTES = 256 * 1024


class _DownloadBody(TrioFileBody):
    """A file response read 256 KiB at a time instead of 8 KiB: a 500 KB output took 60
    thread hand-offs (44 ms of server CPU per job with its download, against 17 for the
    same job with a 9 KB output: bench.scale_out)."""

    buffer_size = DOWNLOAD_READ_BYTES


class _Response(TrioResponse):
    file_body_class = _DownloadBody


class ImgJobsApp(QuartTrio):
    """A QuartTrio app that carries its settings and, while serving, its service; request
    bodies of POSTs (uploads) pass its upload gate."""

    response_class = _Response
    settings: Settings
    service: Service
    uploads: UploadGate

    async def asgi_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await super().asgi_app(scope, receive, send)
            return
        send = _finishing(send)
        if scope["method"] != "POST":
            await super().asgi_app(scope, receive, send)
            return
        async with self.uploads.admit(receive, send) as (gated_receive, answer):
            body = _Body(gated_receive)
            held: list[ASGISendEvent] = []

            async def reply(message: ASGISendEvent) -> None:
                # The end of an answer given before its body has all come waits for it.
                last = message["type"] == "http.response.body" and not message.get("more_body")
                if last and not body.ended:
                    held.append(message)
                    return
                await answer(message)

            await super().asgi_app(scope, body.receive, reply)
            if held:
                await body.linger(max_bytes=max(LINGER_BYTES, 8 * self.settings.max_upload_bytes))
                await answer(held[0])


# How long, and how much of, an answered request's unread body is read and discarded, at
# most (reading costs the server about 1 ms a megabyte).
LINGER_S = 10.0
LINGER_BYTES = 64 * 1024 * 1024


class _Body:
    """A request body's `receive`, remembering whether the body has all come.

    An upload refused before its body was read (413, 415, 503...) is answered at once, and
    its connection closed when the answer ends; a client that sends the whole body before
    reading the answer (Python's urllib, many others) would then hit the closed connection
    and see a broken pipe instead of the answer. So, as nginx's lingering close does, the
    answer's last message waits while the rest of the body is read and thrown away
    (bounded in bytes and time); then the connection is let go.
    """

    def __init__(self, receive: ASGIReceiveCallable) -> None:
        self._receive = receive
        self.ended = False

    async def receive(self) -> ASGIReceiveEvent:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.ended = True
        return message

    async def linger(self, *, max_bytes: int) -> None:
        discarded = 0
        with trio.move_on_after(LINGER_S):
            while not self.ended and discarded <= max_bytes:
                message = await self.receive()
                if message["type"] == "http.request":
                    discarded += len(message.get("body", b""))


# How long the last message of a response may take to hand to hypercorn once it is shielded.
FINAL_SEND_S = 10.0


def _finishing(send: ASGISendCallable) -> ASGISendCallable:
    """`send`, with the last message of a response shielded from cancellation.

    quart-trio sends a response from a nursery that it cancels when the request's body ends;
    hypercorn closes or recycles the connection inside that last send, so a cancelled one
    leaves the connection neither closed nor read (a GET whose body arrives after the answer
    hangs its keep-alive connection until the read timeout). Shielded, but bounded.
    """

    async def finishing_send(message: ASGISendEvent) -> None:
        last = message["type"] == "http.response.body" and not message.get("more_body", False)
        if not last:
            await send(message)
            return
        with trio.CancelScope(shield=True), trio.move_on_after(FINAL_SEND_S):
            await send(message)

    return finishing_send


def current_service() -> Service:
    """The service of the app handling the current request."""
    return cast(ImgJobsApp, current_app).service

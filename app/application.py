"""The Quart-Trio application class and the typed accessor to the running service."""

from __future__ import annotations

from typing import cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from quart import current_app
from quart_trio import QuartTrio

from app.admission import UploadGate
from app.service import Service
from app.settings import Settings

__all__ = ["ImgJobsApp", "current_service"]


class ImgJobsApp(QuartTrio):
    """A QuartTrio app that carries its settings and, while serving, its service; request
    bodies of POSTs (uploads) pass its upload gate."""

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
            await super().asgi_app(scope, gated_receive, answer)


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

"""The Quart-Trio application class and the typed accessor to the running service."""

from __future__ import annotations

from typing import cast

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
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
        if scope["type"] != "http" or scope["method"] != "POST":
            await super().asgi_app(scope, receive, send)
            return
        async with self.uploads.admit(receive, send) as (gated_receive, answer):
            await super().asgi_app(scope, gated_receive, answer)


def current_service() -> Service:
    """The service of the app handling the current request."""
    return cast(ImgJobsApp, current_app).service

"""The Quart-Trio application class and the typed accessor to the running service."""

from __future__ import annotations

from typing import cast

from quart import current_app
from quart_trio import QuartTrio

from app.service import Service
from app.settings import Settings

__all__ = ["ImgJobsApp", "current_service"]


class ImgJobsApp(QuartTrio):
    """A QuartTrio app that carries its settings and, while serving, its service."""

    settings: Settings
    service: Service


def current_service() -> Service:
    """The service of the app handling the current request."""
    return cast(ImgJobsApp, current_app).service

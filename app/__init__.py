"""imgjobs: an asynchronous image-processing service (trio, quart-trio, hypercorn)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.application import ImgJobsApp
    from app.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> ImgJobsApp:
    """Build the application (for `hypercorn -k trio 'app:create_app()'`)."""
    # Imported here, so that worker processes, which import app.runner, do not load
    # the web stack they never use.
    from app.server import create_app as build

    return build(settings)

"""imgjobs: an asynchronous image-processing service (trio, quart-trio, hypercorn)."""

from __future__ import annotations

from app.server import create_app

__all__ = ["create_app"]

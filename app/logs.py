"""Structured logs: one JSON object per line on stderr, one line per event."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

__all__ = ["configure_logging", "log_event"]

_logger = logging.getLogger("imgjobs")
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "event": ..., **fields}`; exceptions go in `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


def configure_logging(level: str) -> None:
    """Send every log record of the process as JSON lines to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # hypercorn's own loggers write plain text through their own handlers: route them here.
    for name in ("hypercorn.error", "hypercorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def log_event(event: str, *, level: int = logging.INFO, exc: bool = False, **fields: Any) -> None:
    """Log `event` (e.g. "job.finished") with its fields as one JSON line."""
    if _logger.isEnabledFor(level):
        _logger.log(level, event, extra={"fields": fields}, exc_info=exc)


def monotonic_ms(since: float) -> float:
    """Milliseconds from `since` (a `time.monotonic()` value) to now, rounded."""
    return round((time.monotonic() - since) * 1000, 1)

"""Following jobs: the listing (`GET /jobs`, a page at a time) and a job's server-sent events
(`GET /jobs/{id}/events`, one event per status change, ending after the last).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import trio
from quart import Blueprint, Response, request

from app.access import caller
from app.application import current_service
from app.errors import InvalidField
from app.models import JobList, JobStatus
from app.routes import TERMINAL, json_response, record_of
from app.service import Service
from app.store import JobRecord
from app.views import job_view

__all__ = ["blueprint"]

blueprint = Blueprint("feeds", __name__)

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
#: How often a stream re-reads its job while it waits (a start is not announced; an end is).
POLL_S: Final = 0.5
#: A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_S: Final = 15.0
#: A stream ends after this long (the browser's EventSource reconnects by itself).
STREAM_S: Final = 300.0
_STATUSES: Final[tuple[JobStatus, ...]] = ("pending", "processing", "completed", "failed")
_encoder = msgspec.json.Encoder()


@blueprint.get("/jobs")
async def list_jobs() -> Response:
    """Jobs, newest first: `status` filters, `limit` (1 to 100, 20) sizes a page, `cursor`
    (the last page's `next_cursor`) continues."""
    status = request.args.get("status")
    if status is not None and status not in _STATUSES:
        raise InvalidField(f"status must be one of {', '.join(_STATUSES)}, not {status[:32]!r}")
    limit = _limit(request.args.get("limit"))
    before = _cursor(request.args.get("cursor"))
    service = current_service()
    records = await service.store.page(
        limit=limit + 1,
        status=_status(status),
        before=before,
        owner=caller() if service.access.keyring.enabled else None,
    )
    page, more = records[:limit], len(records) > limit
    next_cursor = _encode_cursor(page[-1]) if more else None
    hooks = await service.deliveries.of(r.id for r in page if r.callback_url is not None)
    jobs = [job_view(r, hooks.get(r.id)) for r in page]
    return json_response(JobList(jobs=jobs, next_cursor=next_cursor))


def _status(text: str | None) -> JobStatus | None:
    return next((status for status in _STATUSES if status == text), None)


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidField(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {text[:32]!r}")
    return int(text)


def _encode_cursor(record: JobRecord) -> str:
    return base64.urlsafe_b64encode(f"{record.created_at!r}/{record.id}".encode()).decode()


def _cursor(text: str | None) -> tuple[float, str] | None:
    if text is None:
        return None
    try:
        created, _, job_id = base64.urlsafe_b64decode(text.encode()).decode().partition("/")
        return float(created), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidField(
            "cursor is not one this service gave (use next_cursor as it is)"
        ) from None


@blueprint.get("/jobs/<job_id>/events")
async def job_events(job_id: str) -> Response:
    """`text/event-stream`: the job's view now, then at every status change; the stream ends
    after `completed` or `failed`."""
    record = await record_of(job_id)
    response = Response(
        _events(current_service(), record),
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None  # a stream lasts as long as its job, up to STREAM_S
    return response


async def _events(service: Service, record: JobRecord) -> AsyncIterator[bytes]:
    """The stream's lines (it runs after the handler returned: outside the app's context)."""
    yield b"retry: 2000\n\n"
    sent: str | None = None
    with trio.move_on_after(STREAM_S):
        while True:
            if record.status != sent:
                sent = record.status
                data = _encoder.encode(job_view(record))
                yield b"event: " + sent.encode() + b"\ndata: " + data + b"\n\n"
                if sent in TERMINAL:
                    return
            quiet = 0.0
            with service.pool.watch(record.id) as finished:
                while quiet < KEEPALIVE_S:
                    with trio.move_on_after(POLL_S):
                        await finished.wait()
                    latest = await service.store.get(record.id)
                    if latest is None:  # deleted meanwhile
                        yield b"event: deleted\ndata: {}\n\n"
                        return
                    record = latest
                    if record.status != sent:
                        break
                    quiet += POLL_S
                else:
                    yield b": still " + record.status.encode() + b"\n\n"

"""HTTP routes: the seed service's job API, health, and the pool admin endpoint."""

from __future__ import annotations

import hmac
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from quart import Blueprint, Response, request, send_file

from app.application import current_service
from app.errors import (
    InvalidField,
    JobNotReady,
    MalformedJSON,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
)
from app.models import Health, JobError, JobView, PoolResize, PoolView
from app.store import JobRecord

__all__ = ["blueprint", "json_response"]

blueprint = Blueprint("jobs", __name__)

_encoder = msgspec.json.Encoder()
_MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}


def json_response(
    body: Any,
    status: int = 200,
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> Response:
    return Response(
        _encoder.encode(body), status=status, headers=headers, content_type=content_type
    )


def _job_id(text: str) -> str:
    """The canonical form of a job id; anything else is an unknown job (404)."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise NotFound(f"no job with id {text[:64]!r}") from None
    if str(parsed) != text.lower():
        raise NotFound(f"no job with id {text[:64]!r}")
    return str(parsed)


async def _record(text: str) -> JobRecord:
    job_id = _job_id(text)
    record = await current_service().store.get(job_id)
    if record is None:
        raise NotFound(f"no job with id {job_id!r}")
    return record


def job_view(record: JobRecord) -> JobView:
    completed = record.status == "completed"
    return JobView(
        id=record.id,
        status=record.status,
        input_path=record.input_key,
        output_path=record.output_key,
        operation=record.operation,
        width=record.width,
        height=record.height,
        output_format=record.output_format,
        created_at=_timestamp(record.created_at),
        updated_at=_timestamp(record.updated_at),
        error=(
            JobError(code=record.error_code or "failed", message=record.error_message or "")
            if record.status == "failed"
            else None
        ),
        result_width=record.result_width if completed else None,
        result_height=record.result_height if completed else None,
        result_bytes=record.result_bytes if completed else None,
    )


def _timestamp(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


@blueprint.post("/jobs")
async def submit_job() -> Response:
    service = current_service()
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise UnsupportedMediaType(
            f"POST /jobs takes Content-Type: application/json, not {mimetype or 'nothing'}"
        )
    body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if not body:
        raise MalformedJSON("the request body is empty; expected a JSON object")
    submission = await service.parse(body)
    record = await service.submit(submission)
    return json_response(
        {"job_id": record.id, "status": "pending", "message": "Image processing job submitted"},
        status=202,
        headers={"Location": f"/jobs/{record.id}"},
    )


@blueprint.get("/jobs/<job_id>")
async def get_job(job_id: str) -> Response:
    return json_response(job_view(await _record(job_id)))


@blueprint.get("/jobs/<job_id>/download")
async def download_job(job_id: str) -> Response:
    service = current_service()
    record = await _record(job_id)
    if record.status != "completed":
        detail = (
            f"job {record.id} failed ({record.error_code}): nothing to download"
            if record.status == "failed"
            else f"job {record.id} is {record.status}; download it once it is completed"
        )
        raise JobNotReady(detail, job_status=record.status)
    extension = record.output_key.rpartition(".")[2]
    try:
        response = await send_file(
            service.storage.path(record.output_key),
            mimetype=_MEDIA_TYPES[record.output_format],
            as_attachment=True,
            attachment_filename=f"{record.id}.{extension}",
            add_etags=False,
        )
    except FileNotFoundError:
        raise NotFound(f"the output of job {record.id} no longer exists") from None
    # Quoted, as the seed service sent it (werkzeug leaves a plain token unquoted).
    response.headers["Content-Disposition"] = f'attachment; filename="{record.id}.{extension}"'
    response.set_etag(f"{record.id}-{record.result_bytes}")
    response.headers["Cache-Control"] = "private, max-age=31536000, immutable"
    return await response.make_conditional(request)


@blueprint.get("/health")
async def health() -> Response:
    service = current_service()
    queue = service.queue.statistics()
    pool = service.pool.statistics()
    return json_response(
        Health(
            status="stopping" if service.stopping else "healthy",
            timestamp=int(time.time()),
            queue_depth=queue.queued,
            queue_capacity=queue.capacity,
            pool_size=pool.size,
            busy_workers=pool.busy,
        )
    )


def _check_admin() -> None:
    token = current_service().settings.admin_token
    if not token:
        raise NotFound("the admin API is off (set ADMIN_TOKEN to enable it)")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("the admin API needs Authorization: Bearer <ADMIN_TOKEN>")


@blueprint.get("/admin/pool")
async def get_pool() -> Response:
    _check_admin()
    pool = current_service().pool.statistics()
    return json_response(PoolView(size=pool.size, busy_workers=pool.busy))


@blueprint.put("/admin/pool")
async def resize_pool() -> Response:
    _check_admin()
    body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    try:
        resize = msgspec.json.decode(body, type=PoolResize)
    except msgspec.ValidationError as exc:
        raise InvalidField(f"invalid pool size: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    service = current_service()
    service.pool.resize(resize.size)
    pool = service.pool.statistics()
    return json_response(PoolView(size=pool.size, busy_workers=pool.busy))

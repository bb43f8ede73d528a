"""HTTP routes: the seed service's job API, health, and the pool admin endpoint."""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

import msgspec
import trio
from quart import Blueprint, Response, g, request, send_file

from app.access import caller, guarded
from app.application import current_service
from app.errors import (
    InvalidField,
    JobNotReady,
    MalformedJSON,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    WrongNode,
)
from app.models import (
    IDEMPOTENCY_KEY_LENGTH,
    DryRun,
    Health,
    JobStatus,
    JobSubmitted,
    JobView,
    PoolResize,
    PoolView,
    ProbeRequest,
)
from app.outputs import decode_results
from app.service import Accepted, Caller
from app.store import JobRecord
from app.submissions import JobPlan, decode_image_data
from app.views import job_view

__all__ = ["TERMINAL", "blueprint", "json_response", "record_of", "view_of"]

blueprint = Blueprint("jobs", __name__)

_encoder = msgspec.json.Encoder()
TERMINAL = ("completed", "failed")
MAX_WAIT_S = 60.0
# A long-poll re-reads its job this often: another front process may have run it (the
# processes of `hypercorn --workers N` share the database, not their announcements).
WAIT_RECHECK_S = 1.0
DOWNLOAD_CACHING = "private, max-age=31536000, immutable"
MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
}


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


async def record_of(text: str) -> JobRecord:
    """The row of the job named by `text`; 404 for an unknown or malformed id, and for
    another API key's job (whether it exists is not the caller's to know)."""
    job_id = _job_id(text)
    service = current_service()
    record = await service.store.get(job_id)
    if record is None or not service.access.may_see(caller(), record):
        raise NotFound(f"no job with id {job_id!r}")
    return record


async def view_of(record: JobRecord) -> JobView:
    """The job's view, with its webhook's delivery state if it has a callback."""
    if record.callback_url is None:
        return job_view(record)
    deliveries = await current_service().deliveries.of([record.id])
    return job_view(record, deliveries.get(record.id))


@blueprint.before_app_request
async def _authenticate() -> None:
    """Name the caller of the job routes by its API key (401 without a valid one)."""
    if guarded(request.path):
        g.owner = current_service().access.identify(request.headers.get("Authorization"))


@blueprint.post("/jobs")
async def submit_job() -> Response:
    """Submit a job: JSON with a base64 image (the seed's five fields, or a job document), a
    multipart form with an `image` file part, or the raw image as the body, with the seed's
    parameters or a `spec` document in the query (or form). With `?dry_run=true`, answer
    what the job would produce (200) and create nothing."""
    service = current_service()
    parameters = request.args.to_dict()
    dry_run = _flag(parameters.pop("dry_run", None), "dry_run")
    wait_s = _wait_seconds(parameters.pop("wait", None))
    who = Caller(owner=caller(), idempotency_key=_idempotency_key())
    limits = {} if dry_run else service.access.take_submit(who.owner)
    mimetype = request.mimetype
    if mimetype == "application/json":
        body = await _json_body()
        if dry_run:
            return _dry_run((await service.check_json(body))[0])
        accepted = await service.submit_json(body, who)
    elif mimetype == "multipart/form-data":
        data, form = await _multipart_image()
        if dry_run:
            return _dry_run(await service.check_bytes(data, form))
        accepted = await service.submit_bytes(data, form, who)
    elif _is_raw(mimetype):
        _check_length()
        if dry_run:
            return _dry_run(await service.plan_stream(request.body, parameters))
        accepted = await service.submit_stream(request.body, parameters, who)
    else:
        raise UnsupportedMediaType(
            "POST /jobs takes application/json (base64 image), multipart/form-data (an"
            f" `image` file part) or a raw image/* body, not {mimetype or 'nothing'}"
        )
    return await _accepted(accepted, limits, wait_s)


async def _accepted(accepted: Accepted, limits: dict[str, str], wait_s: float) -> Response:
    """The 202 of a submit (a replay answers as the first request was answered); with
    `wait`, the 201 of a job that ended within it, with its view."""
    record = accepted.record
    headers = {"Location": f"/jobs/{record.id}", **limits}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if wait_s:
        ended = await _ended_within(record, wait_s)
        if ended.status in TERMINAL:
            return json_response(await view_of(ended), 201, headers=headers)
    status: JobStatus = "completed" if record.reused else "pending"
    return json_response(JobSubmitted(job_id=record.id, status=status), 202, headers=headers)


async def _ended_within(record: JobRecord, wait_s: float) -> JobRecord:
    """The job's row once it has ended, or as it is when `wait_s` has passed."""
    pool = current_service().pool
    with trio.move_on_after(wait_s):
        while record.status not in TERMINAL:
            with pool.watch(record.id) as finished:
                # Watching before reading: an end in between cannot be missed.
                latest = await current_service().store.get(record.id)
                if latest is None:
                    raise NotFound(f"no job with id {record.id!r} (deleted meanwhile)")
                record = latest
                if record.status in TERMINAL:
                    break
                # Re-read now and then: another server process may have run the job.
                with trio.move_on_after(WAIT_RECHECK_S):
                    await finished.wait()
    return record


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise InvalidField(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LENGTH} printable characters"
        )
    return key


@blueprint.post("/probe")
async def probe_upload() -> Response:
    """What an upload is (format, displayed size, orientation, frames...), creating nothing:
    the same upload forms as `POST /jobs`, without a job description."""
    service = current_service()
    mimetype = request.mimetype
    if mimetype == "application/json":
        try:
            body = msgspec.json.decode(await _json_body(), type=ProbeRequest)
        except msgspec.ValidationError as exc:
            raise InvalidField(f"invalid request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
        limit = service.settings.max_upload_bytes
        description = await service.describe(decode_image_data(body.image_data, limit))
    elif mimetype == "multipart/form-data":
        description = await service.describe((await _multipart_image())[0])
    elif _is_raw(mimetype):
        _check_length()
        description = await service.describe_stream(request.body)
    else:
        raise UnsupportedMediaType(
            "POST /probe takes application/json (base64 `image_data`), multipart/form-data"
            f" (an `image` file part) or a raw image/* body, not {mimetype or 'nothing'}"
        )
    return json_response(description)


def _is_raw(mimetype: str) -> bool:
    return mimetype.startswith("image/") or mimetype == "application/octet-stream"


def _check_length() -> None:
    limit = current_service().settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the image exceeds the upload limit of {limit} bytes")


async def _json_body() -> bytes:
    body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if not body:
        raise MalformedJSON("the request body is empty; expected a JSON object")
    return body


async def _multipart_image() -> tuple[bytes, dict[str, str]]:
    files = await request.files
    form = await request.form
    part = files.get("image")
    if part is None:
        raise InvalidField("the multipart form needs a file part named `image`")
    return part.read(), form.to_dict()


def _flag(text: str | None, name: str) -> bool:
    if text is None or text.lower() in ("false", "0"):
        return False
    if text.lower() in ("true", "1", ""):
        return True
    raise InvalidField(f"{name} must be true or false, not {text[:32]!r}")


def _dry_run(plan: JobPlan) -> Response:
    return json_response(DryRun(variants=plan.planned))


@blueprint.get("/jobs/<job_id>")
async def get_job(job_id: str) -> Response:
    """The job; with `?wait=N` (seconds, up to 60), first wait until it has finished."""
    wait_s = _wait_seconds(request.args.get("wait"))
    record = await record_of(job_id)
    if wait_s:
        record = await _ended_within(record, wait_s)
    return json_response(await view_of(record))


@blueprint.delete("/jobs/<job_id>")
async def delete_job(job_id: str) -> Response:
    """Remove a job and its files; a queued or running job is cancelled first."""
    record = await record_of(job_id)
    if not await current_service().delete(record.id):
        raise NotFound(f"no job with id {record.id!r}")
    return Response(b"", status=204)


def _wait_seconds(text: str | None) -> float:
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_S:
        raise InvalidField(f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}")
    return value


@blueprint.get("/jobs/<job_id>/download")
async def download_job(job_id: str) -> Response:
    """The job's output: its `default` variant, or its only one."""
    record = _completed(await record_of(job_id))
    results = decode_results(record.results)
    if not results:  # the seed's jobs: one output, stored as the seed service stored it
        return await _send_output(
            record, record.output_key, record.output_format, None, record.result_bytes
        )
    name = "default" if "default" in results or len(results) != 1 else next(iter(results))
    if name not in results:
        names = ", ".join(sorted(results))
        raise NotFound(
            f"job {record.id} has no default variant; download one of its variants"
            f" ({names}) from /jobs/{record.id}/variants/<name>"
        )
    result = results[name]
    return await _send_output(record, result.key, result.format, name, result.bytes)


@blueprint.get("/jobs/<job_id>/variants/<name>")
async def download_variant(job_id: str, name: str) -> Response:
    """One named output of a job."""
    record = _completed(await record_of(job_id))
    results = decode_results(record.results)
    if not results and name == "default":
        return await _send_output(
            record, record.output_key, record.output_format, None, record.result_bytes
        )
    if name not in results:
        names = ", ".join(sorted(results)) or "default"
        raise NotFound(f"job {record.id} has no variant {name[:40]!r} (it has: {names})")
    result = results[name]
    return await _send_output(record, result.key, result.format, name, result.bytes)


def _completed(record: JobRecord) -> JobRecord:
    if record.status != "completed":
        detail = (
            f"job {record.id} failed ({record.error_code}): nothing to download"
            if record.status == "failed"
            else f"job {record.id} is {record.status}; download it once it is completed"
        )
        raise JobNotReady(detail, job_status=record.status)
    return record


async def _send_output(
    record: JobRecord, key: str, output_format: str, variant: str | None, size: int | None
) -> Response:
    """Send one output; `variant` None is the seed's job, whose ETag stays as it was."""
    filename = key.rpartition("/")[2]  # <job id>.<ext>, or <job id>.<variant>.<ext>
    storage = current_service().storage
    path = storage.local_path(key)
    if path is None:
        return await _send_stored(record, key, output_format, variant, size)
    try:
        response = await send_file(
            path,
            mimetype=MEDIA_TYPES[output_format],
            as_attachment=True,
            attachment_filename=filename,
            add_etags=False,
        )
    except FileNotFoundError:
        raise NotFound(f"the output of job {record.id} no longer exists") from None
    # Quoted, as the seed service sent it (werkzeug leaves a plain token unquoted).
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    size = response.content_length if variant is not None else record.result_bytes
    response.set_etag(_etag(record, variant, size))
    response.headers["Cache-Control"] = DOWNLOAD_CACHING
    return await response.make_conditional(request)


async def _send_stored(
    record: JobRecord, key: str, output_format: str, variant: str | None, size: int | None
) -> Response:
    """An output in an object store: 304 if the client has it, a redirect to a presigned
    URL with DOWNLOAD_REDIRECT, else its bytes streamed through (no byte ranges)."""
    service = current_service()
    filename = key.rpartition("/")[2]
    etag = _etag(record, variant, size)
    if request.if_none_match.contains(etag):
        response = Response(b"", status=304)
    elif service.settings.download_redirect and (
        url := service.storage.presigned_url(
            key, filename=filename, media_type=MEDIA_TYPES[output_format]
        )
    ):
        # The URL expires: the redirect itself must not be cached.
        return Response(b"", status=302, headers={"Location": url, "Cache-Control": "no-store"})
    else:
        try:
            blob = await service.storage.open(key)
        except FileNotFoundError:
            raise NotFound(f"the output of job {record.id} no longer exists") from None
        response = Response(blob.chunks, mimetype=MEDIA_TYPES[output_format])
        response.content_length = blob.size
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.set_etag(etag)
    response.headers["Cache-Control"] = DOWNLOAD_CACHING
    return response


def _etag(record: JobRecord, variant: str | None, size: int | None) -> str:
    return f"{record.id}-{size}" if variant is None else f"{record.id}-{variant}-{size}"


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
    if service.settings.service_role == "api":
        raise WrongNode("this node runs no workers (SERVICE_ROLE=api); resize a worker node's pool")
    service.pool.resize(resize.size)
    pool = service.pool.statistics()
    return json_response(PoolView(size=pool.size, busy_workers=pool.busy))

"""The composition root: opens every long-lived part and submits jobs.

`open_service` owns the store, the storage folders, the queue, the worker processes and
the worker tasks, in that order, so shutdown runs in reverse: stop taking jobs, let the
running ones finish within SHUTDOWN_GRACE (then kill them and give their jobs back as
pending), stop the workers, close the database.
"""

from __future__ import annotations

import binascii
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial

import msgspec
import trio

from app.errors import (
    InvalidBase64,
    InvalidField,
    MalformedJSON,
    PayloadTooLarge,
    ServiceStopping,
)
from app.logs import log_event
from app.models import OutputFormat, SubmitRequest, UploadParameters
from app.queue import JobQueue
from app.runner import ProcessRunner, WorkerSetup
from app.settings import Settings
from app.storage import LocalStorage
from app.store import JobRecord, JobStore, open_job_store
from app.workers import WorkerPool, check_output_size, inspect_upload

__all__ = ["Service", "Submission", "open_service", "parse_submission", "parse_upload"]

# How often pending rows that no queue holds (left by a restart, a full queue at start-up,
# or a dead server sharing the database) are looked for.
SWEEP_INTERVAL_S = 2.0
# With other servers sharing the storage, only leftovers this old are surely abandoned.
SHARED_LEFTOVER_AGE_S = 3600.0
# Bodies bigger than this are parsed on a thread, off the event loop.
INLINE_PARSE_BYTES = 64 * 1024

_DATA_URL = re.compile(rb"^data:image/[A-Za-z0-9.+-]+;base64,")
_WHITESPACE = re.compile(rb"\s+")
_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "TIFF": "tif",
    "BMP": "bmp",
}


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    """A checked `POST /jobs`: decoded image bytes and what to do with them."""

    data: bytes
    source_format: str
    operation: str
    width: int
    height: int
    output_format: OutputFormat


def _field_message(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    reason, sep, where = text.partition(" - at `$.")
    if sep:
        return f"invalid field `{where.rstrip('`')}`: {reason}"
    return f"invalid request: {text}"


def decode_image_data(text: str, max_bytes: int) -> bytes:
    """Standard base64 (a `data:image/...;base64,` prefix and line breaks allowed)."""
    raw = text.encode("ascii", errors="replace")
    if raw.startswith(b"data:"):
        match = _DATA_URL.match(raw)
        if match is None:
            raise InvalidBase64("image_data: a data URL must look like data:image/<type>;base64,")
        raw = raw[match.end() :]
    if len(raw) // 4 * 3 > max_bytes + 3:
        raise PayloadTooLarge(f"the image exceeds the upload limit of {max_bytes} bytes")
    try:
        data = binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        compact = _WHITESPACE.sub(b"", raw)
        compact += b"=" * (-len(compact) % 4)
        try:
            data = binascii.a2b_base64(compact, strict_mode=True)
        except binascii.Error:
            raise InvalidBase64("image_data is not valid standard base64") from None
    if not data:
        raise InvalidField("image_data is empty")
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data)} bytes, over the upload limit of {max_bytes} bytes"
        )
    return data


def parse_submission(body: bytes, settings: Settings) -> Submission:
    """Check a JSON `POST /jobs` (base64 image) before anything is stored."""
    try:
        request = msgspec.json.decode(body, type=SubmitRequest)
    except msgspec.ValidationError as exc:
        raise InvalidField(_field_message(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    check_output_size(settings, request.width, request.height)
    data = decode_image_data(request.image_data, settings.max_upload_bytes)
    return _checked(data, request, settings)


def parse_upload(data: bytes, parameters: Mapping[str, str], settings: Settings) -> Submission:
    """Check a binary `POST /jobs` (raw body or multipart file) before anything is stored."""
    try:
        request = msgspec.convert(dict(parameters), UploadParameters, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidField(_field_message(exc)) from None
    check_output_size(settings, request.width, request.height)
    if not data:
        raise InvalidField("the upload is empty; send the image bytes")
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data)} bytes, over the upload limit of "
            f"{settings.max_upload_bytes} bytes"
        )
    return _checked(data, request, settings)


def _checked(
    data: bytes, request: SubmitRequest | UploadParameters, settings: Settings
) -> Submission:
    info = inspect_upload(data, settings)
    requested = request.output_format
    output: OutputFormat = (
        info.default_output
        if requested is None
        else ("jpeg" if requested in ("jpeg", "jpg") else "png")
    )
    return Submission(
        data=data,
        source_format=info.format,
        operation=request.operation,
        width=request.width,
        height=request.height,
        output_format=output,
    )


class Service:
    """What request handlers use: the settings, the store and the running pool."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: LocalStorage,
        queue: JobQueue,
        pool: WorkerPool,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.queue = queue
        self.pool = pool
        self.stopping = False

    def stop_intake(self) -> None:
        """Refuse new jobs (503) and let workers take no more from the queue."""
        self.stopping = True
        self.pool.stop()

    async def parse(self, body: bytes) -> Submission:
        """`parse_submission`, on a thread when the body is big (base64 and JSON decoding
        of megabytes would stall every other request)."""
        if len(body) <= INLINE_PARSE_BYTES:
            return parse_submission(body, self.settings)
        return await trio.to_thread.run_sync(parse_submission, body, self.settings)

    async def parse_upload(self, data: bytes, parameters: Mapping[str, str]) -> Submission:
        if len(data) <= INLINE_PARSE_BYTES:
            return parse_upload(data, parameters, self.settings)
        return await trio.to_thread.run_sync(parse_upload, data, parameters, self.settings)

    async def delete(self, job_id: str) -> bool:
        """Remove a job and its files, killing its worker if it is running here."""
        record = await self.store.get(job_id)
        if record is None or not await self.store.delete(job_id):
            return False
        cancelled = self.pool.cancel(job_id)
        await self.storage.remove(record.input_key, record.output_key)
        log_event("job.deleted", job_id=job_id, status=record.status, cancelled=cancelled)
        return True

    async def submit(self, submission: Submission) -> JobRecord:
        """Store the upload and the row, then queue the job (or refuse with 503)."""
        if self.stopping:
            raise ServiceStopping(
                "the service is shutting down; retry shortly",
                retry_after_s=self.settings.retry_after_s,
            )
        job_id = str(uuid.uuid4())
        extension = _EXTENSIONS[submission.source_format]
        now = time.time()
        record = JobRecord(
            id=job_id,
            status="pending",
            operation=submission.operation,  # type: ignore[arg-type]
            width=submission.width,
            height=submission.height,
            output_format=submission.output_format,
            input_key=f"uploads/{job_id}.{extension}",
            output_key=f"outputs/{job_id}.{'jpg' if submission.output_format == 'jpeg' else 'png'}",
            input_bytes=len(submission.data),
            created_at=now,
            updated_at=now,
        )
        with self.queue.reserve_nowait(job_id) as slot:
            await self.storage.write(record.input_key, submission.data)
            try:
                await self.store.insert(record)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.storage.remove(record.input_key)
                raise
            slot.put()
        log_event(
            "job.submitted",
            job_id=job_id,
            operation=record.operation,
            width=record.width,
            height=record.height,
            output_format=record.output_format,
            input_format=submission.source_format,
            input_bytes=record.input_bytes,
        )
        return record


async def _sweep(pool: WorkerPool) -> None:
    while True:
        try:
            await pool.requeue()
        except Exception:
            log_event("sweep.error", level=logging.ERROR, exc=True)
        await trio.sleep(SWEEP_INTERVAL_S)


async def _clean_storage(storage: LocalStorage, store: JobStore, *, alone: bool) -> None:
    """Remove what crashes left: temporary files, and files of jobs that have no row."""
    temps, keys = await trio.to_thread.run_sync(
        partial(storage.leftovers, older_than_s=0 if alone else SHARED_LEFTOVER_AGE_S)
    )
    known = await store.existing(keys)
    orphans = [key for job_id, job_keys in keys.items() if job_id not in known for key in job_keys]
    await storage.remove(*orphans)
    for temp in temps:
        await storage.discard(temp)
    if temps or orphans:
        log_event("storage.cleaned", temp_files=len(temps), orphan_files=len(orphans))


async def _expire(store: JobStore, storage: LocalStorage, ttl_s: float) -> None:
    """Remove finished jobs older than JOB_TTL, files first, then rows."""
    while True:
        try:
            while records := await store.expired(finished_before=time.time() - ttl_s, limit=500):
                for record in records:
                    await storage.remove(record.input_key, record.output_key)
                    await store.delete(record.id)
                log_event("jobs.expired", jobs=len(records))
        except Exception:
            log_event("expire.error", level=logging.ERROR, exc=True)
        await trio.sleep(min(max(ttl_s / 10, 1.0), 60.0))


@asynccontextmanager
async def open_service(settings: Settings) -> AsyncIterator[Service]:
    """Start everything the service needs; on exit, shut it down gracefully."""
    storage = LocalStorage(settings.upload_dir, settings.output_dir)
    alone = await trio.to_thread.run_sync(storage.prepare)
    async with open_job_store(settings.db_path) as store, trio.open_nursery() as nursery:
        await _clean_storage(storage, store, alone=alone)
        queue = JobQueue(settings.queue_size, retry_after_s=settings.retry_after_s)
        setup = WorkerSetup(memory_limit_bytes=settings.worker_memory_bytes)
        runner = ProcessRunner(settings.worker_pool_size, setup)
        pool = WorkerPool(settings, store, storage, queue, runner)
        workers_done = trio.Event()

        async def serve_pool() -> None:
            try:
                await pool.serve()
            finally:
                workers_done.set()

        nursery.start_soon(serve_pool)
        recovered = await pool.requeue()
        log_event(
            "service.started",
            pool_size=settings.worker_pool_size,
            queue_capacity=settings.queue_size,
            requeued_jobs=recovered,
        )
        nursery.start_soon(_sweep, pool)
        if settings.job_ttl_s > 0:
            nursery.start_soon(_expire, store, storage, settings.job_ttl_s)
        service = Service(settings, store, storage, queue, pool)
        try:
            yield service
        finally:
            service.stop_intake()
            busy = pool.statistics().busy
            log_event("service.stopping", running_jobs=busy, queued_jobs=queue.statistics().queued)
            with trio.move_on_after(settings.shutdown_grace_s) as grace:
                await workers_done.wait()
            if grace.cancelled_caught:
                log_event(
                    "service.grace_expired",
                    level=logging.WARNING,
                    released_jobs=pool.statistics().busy,
                )
            nursery.cancel_scope.cancel()
            storage.close()
    log_event("service.stopped")

"""The composition root: opens every long-lived part and submits jobs.

`open_service` owns the store, the storage folders, the queue, the worker processes and
the worker tasks, in that order, so shutdown runs in reverse: stop taking jobs, let the
running ones finish within SHUTDOWN_GRACE (then kill them and give their jobs back as
pending), stop the workers, close the database.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from app.errors import RequestTimeout, ServiceStopping
from app.logs import log_event
from app.metrics import Metrics
from app.outputs import output_key, output_keys
from app.queue import JobQueue, Slot
from app.runner import ProcessRunner, WorkerSetup
from app.settings import Settings
from app.storage import LocalStorage
from app.store import JobRecord, JobStore, open_job_store
from app.submissions import (
    JobPlan,
    check_upload,
    describe_upload,
    extension_of,
    parse_json,
    parse_parameters,
)
from app.workers import WorkerPool
from imaging import Description

__all__ = ["Service", "open_service"]

T = TypeVar("T")

# How often pending rows that no queue holds (left by a restart, a full queue at start-up,
# or a dead server sharing the database) are looked for.
SWEEP_INTERVAL_S = 2.0
# With other servers sharing the storage, only leftovers this old are surely abandoned.
SHARED_LEFTOVER_AGE_S = 3600.0
# Bodies bigger than this are parsed on a thread, off the event loop.
INLINE_PARSE_BYTES = 64 * 1024


class Service:
    """What request handlers use: the settings, the store and the running pool."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: LocalStorage,
        queue: JobQueue,
        pool: WorkerPool,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.queue = queue
        self.pool = pool
        self.metrics = metrics
        self.stopping = False

    def stop_intake(self) -> None:
        """Refuse new jobs (503) and let workers take no more from the queue."""
        self.stopping = True
        self.pool.stop()

    async def check_json(self, body: bytes) -> tuple[JobPlan, bytes]:
        """A JSON body with a base64 image (the seed's, or a job document), checked."""
        if len(body) <= INLINE_PARSE_BYTES:
            order, data = parse_json(body, self.settings)
            return check_upload(data, order, self.settings), data
        # base64 and JSON decoding of megabytes would stall every other request
        order, data = await trio.to_thread.run_sync(parse_json, body, self.settings)
        return await self._off_loop(check_upload, data, order, self.settings), data

    async def check_bytes(self, data: bytes, parameters: Mapping[str, str]) -> JobPlan:
        """An image already in memory (a multipart file part) with its parameters, checked."""
        order = parse_parameters(parameters, self.settings)
        return await self._off_loop(check_upload, data, order, self.settings)

    async def submit_json(self, body: bytes) -> JobRecord:
        plan, data = await self.check_json(body)
        return await self._submit_bytes(plan, data)

    async def submit_bytes(self, data: bytes, parameters: Mapping[str, str]) -> JobRecord:
        plan = await self.check_bytes(data, parameters)
        return await self._submit_bytes(plan, data)

    async def submit_stream(
        self, chunks: AsyncIterable[bytes], parameters: Mapping[str, str]
    ) -> JobRecord:
        """A raw image body, written to storage as it arrives (never whole in memory).

        The queue place is reserved before the body is read, so a full queue answers 503
        at once; the size limit is enforced while receiving.
        """
        order = parse_parameters(parameters, self.settings)
        job_id = self._new_job_id()
        with self.queue.reserve_nowait(job_id) as slot:
            temp = self.storage.temp_path(f"uploads/{job_id}")
            try:
                size, plan = await self._receive(
                    temp, chunks, partial(check_upload, order=order, settings=self.settings)
                )
                key = f"uploads/{job_id}.{extension_of(plan.source_format)}"
                await self.storage.commit(temp, key)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.storage.discard(temp)
                raise
            return await self._enqueue(slot, plan, key, size)

    async def plan_stream(
        self, chunks: AsyncIterable[bytes], parameters: Mapping[str, str]
    ) -> JobPlan:
        """A dry run of `submit_stream`: the plan, nothing stored or queued."""
        order = parse_parameters(parameters, self.settings)
        return await self.inspect_stream(
            chunks, partial(check_upload, order=order, settings=self.settings)
        )

    async def describe(self, image: bytes) -> Description:
        """`POST /probe` of an image in memory."""
        return await self._off_loop(describe_upload, image, self.settings)

    async def describe_stream(self, chunks: AsyncIterable[bytes]) -> Description:
        """`POST /probe` of a raw body."""
        return await self.inspect_stream(chunks, partial(describe_upload, settings=self.settings))

    async def inspect_stream(self, chunks: AsyncIterable[bytes], inspect: Callable[[Path], T]) -> T:
        """A raw image body received into a temporary file, inspected, then discarded
        (dry runs and probes: nothing is kept, no queue place is taken)."""
        temp = self.storage.temp_path(f"uploads/{uuid.uuid4()}")
        try:
            return (await self._receive(temp, chunks, inspect))[1]
        finally:
            with trio.CancelScope(shield=True):
                await self.storage.discard(temp)

    async def _receive(
        self, temp: Path, chunks: AsyncIterable[bytes], then: Callable[[Path], T]
    ) -> tuple[int, T]:
        with trio.move_on_after(self.settings.body_timeout_s) as receiving:
            received = await self.storage.receive(
                temp, chunks, limit=self.settings.max_upload_bytes, then=then
            )
        if receiving.cancelled_caught:
            raise RequestTimeout("the request body was not received in time")
        return received

    @staticmethod
    async def _off_loop(check: Callable[..., T], data: bytes, *args: object) -> T:
        """`check(data, *args)`, on a thread when `data` is big enough to stall the loop."""
        if len(data) <= INLINE_PARSE_BYTES:
            return check(data, *args)
        return await trio.to_thread.run_sync(check, data, *args)

    def _new_job_id(self) -> str:
        if self.stopping:
            raise ServiceStopping(
                "the service is shutting down; retry shortly",
                retry_after_s=self.settings.retry_after_s,
            )
        return str(uuid.uuid4())

    async def _submit_bytes(self, plan: JobPlan, data: bytes) -> JobRecord:
        job_id = self._new_job_id()
        with self.queue.reserve_nowait(job_id) as slot:
            key = f"uploads/{job_id}.{extension_of(plan.source_format)}"
            await self.storage.write(key, data)
            return await self._enqueue(slot, plan, key, len(data))

    async def delete(self, job_id: str) -> bool:
        """Remove a job and its files, killing its worker if it is running here."""
        record = await self.store.get(job_id)
        if record is None or not await self.store.delete(job_id):
            return False
        cancelled = self.pool.cancel(job_id)
        await self.storage.remove(record.input_key, *output_keys(record).values())
        log_event("job.deleted", job_id=job_id, status=record.status, cancelled=cancelled)
        return True

    async def _enqueue(self, slot: Slot, plan: JobPlan, input_key: str, size: int) -> JobRecord:
        """Insert the row of a stored upload, then fill its reserved queue place."""
        job_id = slot.job_id
        now = time.time()
        record = JobRecord(
            id=job_id,
            status="pending",
            operation=plan.order.operation,
            width=plan.width,
            height=plan.height,
            output_format=plan.output_format,
            input_key=input_key,
            output_key=output_key(job_id, next(iter(plan.planned)), plan.output_format),
            input_bytes=size,
            created_at=now,
            updated_at=now,
            spec=plan.document,
        )
        try:
            await self.store.insert(record)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.storage.remove(input_key)
            raise
        slot.put()
        self.metrics.upload_stored(size)
        log_event(
            "job.submitted",
            job_id=job_id,
            operation=record.operation,
            width=record.width,
            height=record.height,
            output_format=record.output_format,
            input_format=plan.source_format,
            input_bytes=size,
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
                    await storage.remove(record.input_key, *output_keys(record).values())
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
        metrics = Metrics()
        pool = WorkerPool(settings, store, storage, queue, runner, metrics)
        metrics.track(queue.statistics, pool.statistics)
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
        service = Service(settings, store, storage, queue, pool, metrics)
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

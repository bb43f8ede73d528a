"""The composition root: opens every long-lived part and submits jobs.

`open_service` owns the store, the storage folders, the queue, the worker processes and
the worker tasks, in that order, so shutdown runs in reverse: stop taking jobs, let the
running ones finish within SHUTDOWN_GRACE (then kill them and give their jobs back as
pending), stop the workers, close the database.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager as ContextManager
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

import msgspec
import trio

from app.access import Access
from app.backends import open_store, storage_for
from app.delivery_store import DeliveryStore
from app.errors import IdempotencyKeyReused, InvalidField, RequestTimeout, ServiceStopping
from app.logs import log_event
from app.metrics import Metrics
from app.outputs import decode_results, encode_results, output_key, output_keys
from app.queue import JobQueue, Slot
from app.runner import ProcessRunner, WorkerSetup
from app.settings import Settings
from app.shared_queue import SharedQueue, SharedSlot
from app.ssrf import ForbiddenDestination, Resolver, check_url, resolve_public, system_resolver
from app.storage import BlobStorage
from app.store import JobDatabase, JobRecord, JobStore, SharedJobStore
from app.submissions import (
    JobPlan,
    Order,
    check_upload,
    describe_upload,
    extension_of,
    parse_json,
    parse_parameters,
)
from app.upkeep import clean_storage, deliverer_for, expire, sweep
from app.workers import WorkerPool
from imaging import Description

__all__ = ["Accepted", "Caller", "Service", "open_service"]

T = TypeVar("T")

# Bodies bigger than this are parsed on a thread, off the event loop.
INLINE_PARSE_BYTES = 64 * 1024
# A retry with the same Idempotency-Key within this time answers the first job again.
IDEMPOTENCY_WINDOW_S = 24 * 3600.0


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who submits (an API key's name; None without keys) and the request's idempotency key."""

    owner: str | None = None
    idempotency_key: str | None = None


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """A submit's answer: the job, and whether it was made by an earlier request."""

    record: JobRecord
    replayed: bool = False


class _Prints(msgspec.Struct, frozen=True, kw_only=True):
    """The digests of a submit: the upload's (result reuse) and the whole request's (replays);
    None where nothing needs them (a seed job without an idempotency key: no hashing)."""

    upload: bytes | None = None
    request: bytes | None = None


class Service:
    """What request handlers use: the settings, the store and the running pool."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: BlobStorage,
        queue: JobQueue | SharedQueue,
        pool: WorkerPool,
        metrics: Metrics,
        access: Access,
        deliveries: DeliveryStore,
        *,
        job_ended: Callable[[], None] = lambda: None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deliveries = deliveries
        self.storage = storage
        self.queue = queue
        self.pool = pool
        self.metrics = metrics
        self.access = access
        self.stopping = False
        self._job_ended = job_ended  # a job ended at submit (reused): its webhook is due
        self._resolver = resolver

    def stop_intake(self) -> None:
        """Refuse new jobs (503) and let workers take no more from the queue."""
        self.stopping = True
        self.pool.stop()

    async def check_json(self, body: bytes) -> tuple[JobPlan, bytes]:
        """A JSON body with a base64 image (the seed's, or a job document), checked."""
        if len(body) <= INLINE_PARSE_BYTES:
            order, data = parse_json(body, self.settings)
            return check_upload(data, order, self.settings), data
        # base64 and JSON decoding of megabytes would stall every other request: one trip
        # to a thread parses and checks
        return await self.storage.threads.run(_parse_and_check, body, self.settings)

    async def check_bytes(self, data: bytes, parameters: Mapping[str, str]) -> JobPlan:
        """An image already in memory (a multipart file part) with its parameters, checked."""
        order = parse_parameters(parameters, self.settings)
        return await self._off_loop(check_upload, data, order, self.settings)

    async def submit_json(self, body: bytes, caller: Caller) -> Accepted:
        plan, data = await self.check_json(body)
        return await self._submit_bytes(plan, data, caller)

    async def submit_bytes(
        self, data: bytes, parameters: Mapping[str, str], caller: Caller
    ) -> Accepted:
        plan = await self.check_bytes(data, parameters)
        return await self._submit_bytes(plan, data, caller)

    async def submit_stream(
        self, chunks: AsyncIterable[bytes], parameters: Mapping[str, str], caller: Caller
    ) -> Accepted:
        """A raw image body, written to storage as it arrives (never whole in memory).

        The queue place is reserved before the body is read, so a full queue answers 503
        at once; the size limit is enforced while receiving.
        """
        order = parse_parameters(parameters, self.settings)
        job_id = self._new_job_id()
        await self._count_waiting()
        with self._reserve(job_id, caller) as slot:
            temp = self.storage.temp_path(f"uploads/{job_id}")
            try:
                size, (plan, upload) = await self._receive(
                    temp,
                    chunks,
                    partial(_check_file, order=order, settings=self.settings, caller=caller),
                )
                prints = _prints(plan, upload, caller)
                if (earlier := await self._replay(caller, prints)) is not None:
                    await self.storage.discard(temp)
                    return earlier
                await self._check_callback(plan)
                key = f"uploads/{job_id}.{extension_of(plan.source_format)}"
                await self.storage.commit(temp, key)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.storage.discard(temp)
                raise
            if (reused := await self._reuse(plan, key, size, caller, prints)) is not None:
                return reused
            return await self._enqueue(slot, plan, key, size, caller, prints)

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

    async def _off_loop(self, check: Callable[..., T], data: bytes, *args: object) -> T:
        """`check(data, *args)`, on a thread when `data` is big enough to stall the loop."""
        if len(data) <= INLINE_PARSE_BYTES:
            return check(data, *args)
        return await self.storage.threads.run(check, data, *args)

    def _new_job_id(self) -> str:
        if self.stopping:
            raise ServiceStopping(
                "the service is shutting down; retry shortly",
                retry_after_s=self.settings.retry_after_s,
            )
        return str(uuid.uuid4())

    async def _submit_bytes(self, plan: JobPlan, data: bytes, caller: Caller) -> Accepted:
        upload = None
        if caller.idempotency_key is not None or plan.document is not None:
            upload = await self._off_loop(_sha256, data)
        prints = _prints(plan, upload, caller)
        if (earlier := await self._replay(caller, prints)) is not None:
            return earlier
        await self._check_callback(plan)
        job_id = self._new_job_id()
        await self._count_waiting()
        with self._reserve(job_id, caller) as slot:
            key = f"uploads/{job_id}.{extension_of(plan.source_format)}"
            await self.storage.write(key, data)
            if (reused := await self._reuse(plan, key, len(data), caller, prints)) is not None:
                return reused
            return await self._enqueue(slot, plan, key, len(data), caller, prints)

    async def _count_waiting(self) -> None:
        """With a shared database, other nodes' jobs count against the queue's bound too:
        read how many wait before reserving a place."""
        if isinstance(self.queue, SharedQueue):
            await self.queue.refresh()

    def _reserve(self, job_id: str, caller: Caller) -> ContextManager[Slot | SharedSlot]:
        return self.queue.reserve_nowait(job_id, caller.owner, owner_limit=self.access.max_queued)

    async def _replay(self, caller: Caller, prints: _Prints) -> Accepted | None:
        """The job an earlier request with this idempotency key made (within 24 h), if the
        request was the same; 422 if it was another."""
        if caller.idempotency_key is None:
            return None
        earlier = await self.store.replayable(
            owner=caller.owner,
            idempotency_key=caller.idempotency_key,
            since=time.time() - IDEMPOTENCY_WINDOW_S,
        )
        return None if earlier is None else _replayed(earlier, prints)

    async def _check_callback(self, plan: JobPlan) -> None:
        """Resolve the callback's host now: a name that leads to a private address is a 400
        at submit (and is checked again at every attempt: DNS may change meanwhile)."""
        url = plan.order.callback_url
        if url is None:
            return
        allow = self.settings.webhook_allow_private
        try:
            await resolve_public(
                check_url(url, allow_private=allow), allow_private=allow, resolver=self._resolver
            )
        except ForbiddenDestination as exc:
            raise InvalidField(f"invalid field `callback_url`: {exc}") from None

    async def _reuse(
        self, plan: JobPlan, input_key: str, size: int, caller: Caller, prints: _Prints
    ) -> Accepted | None:
        """A job completed at once from the outputs of an earlier one of the same caller,
        upload and document (copied under the new job's keys); None if there is none, or
        its outputs are gone (then the job is processed as usual)."""
        if plan.document is None or prints.upload is None:
            return None
        earlier = await self.store.reusable(
            owner=caller.owner, input_sha256=prints.upload, spec=plan.document
        )
        results = decode_results(None if earlier is None else earlier.results)
        if earlier is None or not results:
            return None
        job_id = input_key.removeprefix("uploads/").partition(".")[0]
        copies = {
            name: msgspec.structs.replace(result, key=output_key(job_id, name, result.format))
            for name, result in results.items()
        }
        try:
            for name, result in results.items():
                await self.storage.copy(result.key, copies[name].key)
        except FileNotFoundError:  # expired or deleted meanwhile
            with trio.CancelScope(shield=True):
                await self.storage.remove(*(copy.key for copy in copies.values()))
            return None
        now = time.time()
        record = msgspec.structs.replace(
            self._record(plan, job_id, input_key, size, caller, prints, now),
            status="completed",
            reused=True,
            result_width=earlier.result_width,
            result_height=earlier.result_height,
            result_bytes=earlier.result_bytes,
            results=encode_results(copies),
            started_at=now,
            finished_at=now,
        )
        accepted = await self._insert(record, prints, extra_keys=[c.key for c in copies.values()])
        if not accepted.replayed:
            self.metrics.upload_stored(size)
            self.metrics.job_ended(code=None, processing_s=0.0)
            log_event("job.reused", job_id=job_id, source_job_id=earlier.id, owner=caller.owner)
            if record.callback_url is not None:
                self._job_ended()
        return accepted

    async def delete(self, job_id: str) -> bool:
        """Remove a job and its files, killing its worker if it is running here."""
        record = await self.store.get(job_id)
        if record is None or not await self.store.delete(job_id):
            return False
        cancelled = self.pool.cancel(job_id)
        await self.storage.remove(record.input_key, *output_keys(record).values())
        log_event("job.deleted", job_id=job_id, status=record.status, cancelled=cancelled)
        return True

    def _record(
        self,
        plan: JobPlan,
        job_id: str,
        input_key: str,
        size: int,
        caller: Caller,
        prints: _Prints,
        now: float,
    ) -> JobRecord:
        return JobRecord(
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
            owner=caller.owner,
            idempotency_key=caller.idempotency_key,
            request_sha256=prints.request,
            input_sha256=prints.upload,
            callback_url=plan.order.callback_url,
            metadata=plan.order.metadata,
        )

    async def _insert(
        self, record: JobRecord, prints: _Prints, *, extra_keys: list[str] | None = None
    ) -> Accepted:
        """Insert the row of a stored upload; if a concurrent request with the same
        idempotency key made its job first, remove this one's files and answer that job."""
        keys = [record.input_key, *(extra_keys or [])]
        try:
            earlier = await self.store.insert(
                record, replay_since=record.created_at - IDEMPOTENCY_WINDOW_S
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.storage.remove(*keys)
            raise
        if earlier is not None:
            await self.storage.remove(*keys)
            return _replayed(earlier, prints)
        return Accepted(record=record)

    async def _enqueue(
        self,
        slot: Slot | SharedSlot,
        plan: JobPlan,
        input_key: str,
        size: int,
        caller: Caller,
        prints: _Prints,
    ) -> Accepted:
        """Insert the row of a stored upload, then fill its reserved queue place."""
        job_id = slot.job_id
        record = self._record(plan, job_id, input_key, size, caller, prints, time.time())
        accepted = await self._insert(record, prints)
        if accepted.replayed:
            return accepted
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
            owner=caller.owner,
        )
        return accepted


def _parse_and_check(body: bytes, settings: Settings) -> tuple[JobPlan, bytes]:
    order, data = parse_json(body, settings)
    return check_upload(data, order, settings), data


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _check_file(
    temp: Path, *, order: Order, settings: Settings, caller: Caller
) -> tuple[JobPlan, bytes | None]:
    """A received upload checked, with its digest if anything will need it (on the thread
    that wrote it, so hashing never runs on the event loop)."""
    plan = check_upload(temp, order, settings)
    if caller.idempotency_key is None and plan.document is None:
        return plan, None
    with open(temp, "rb") as file:
        return plan, hashlib.file_digest(file, "sha256").digest()


def _prints(plan: JobPlan, upload: bytes | None, caller: Caller) -> _Prints:
    """The request's fingerprint: the upload's digest and the checked order (steps, output,
    callback, metadata), so a retry that differs only in JSON spacing is the same request."""
    if caller.idempotency_key is None or upload is None:
        return _Prints(upload=upload)
    request = hashlib.sha256(upload + msgspec.json.encode(plan.order)).digest()
    return _Prints(upload=upload, request=request)


def _replayed(earlier: JobRecord, prints: _Prints) -> Accepted:
    if earlier.request_sha256 != prints.request:
        raise IdempotencyKeyReused(
            f"this Idempotency-Key was used for another request (job {earlier.id}) in the last"
            " 24 hours; use a new key for a new request"
        )
    return Accepted(record=earlier, replayed=True)


@asynccontextmanager
async def open_service(settings: Settings) -> AsyncIterator[Service]:
    """Start everything the service needs; on exit, shut it down gracefully."""
    storage = storage_for(settings)
    alone = await trio.to_thread.run_sync(storage.prepare)
    async with open_store(settings) as store, trio.open_nursery() as nursery:
        await clean_storage(storage, store, alone=alone)
        queue = _queue_for(settings, store)
        setup = WorkerSetup(memory_limit_bytes=settings.worker_memory_bytes)
        runs_jobs = settings.service_role != "api"
        runner = ProcessRunner(settings.worker_pool_size, setup)
        metrics = Metrics()
        pool = WorkerPool(
            settings, store, storage, queue, runner, metrics, size=None if runs_jobs else 0
        )
        metrics.track(queue.statistics, pool.statistics)
        workers_done = trio.Event()
        if isinstance(queue, SharedQueue):
            shared = cast(SharedJobStore, store)
            await nursery.start(shared.serve_notifications, partial(_notified, queue, pool))
            nursery.start_soon(queue.refresh_counts)

        async def serve_pool() -> None:
            try:
                await pool.serve()
            finally:
                workers_done.set()

        if runs_jobs:
            nursery.start_soon(serve_pool)
        else:
            workers_done.set()
        recovered = await pool.requeue()
        log_event(
            "service.started",
            role=settings.service_role,
            database="postgresql" if settings.database_url else "sqlite",
            storage="s3" if settings.storage_url else "local",
            pool_size=pool.statistics().size,
            queue_capacity=settings.queue_size,
            requeued_jobs=recovered,
        )
        nursery.start_soon(sweep, pool)
        if settings.job_ttl_s > 0:
            nursery.start_soon(expire, store, storage, settings.job_ttl_s)
        deliverer = deliverer_for(settings, store, metrics)
        if deliverer is not None:
            pool.webhook_due = deliverer.nudge
            await nursery.start(deliverer.serve)
        service = Service(
            settings,
            store,
            storage,
            queue,
            pool,
            metrics,
            Access(settings),
            store.deliveries,
            job_ended=pool.webhook_due,
        )
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


def _queue_for(settings: Settings, store: JobDatabase) -> JobQueue | SharedQueue:
    """The in-memory queue of one process, or with a shared database its pending rows."""
    if settings.database_url is None:
        return JobQueue(settings.queue_size, retry_after_s=settings.retry_after_s)
    shared = cast(SharedJobStore, store)
    return SharedQueue(shared, settings.queue_size, retry_after_s=settings.retry_after_s)


def _notified(queue: SharedQueue, pool: WorkerPool, channel: str, job_id: str) -> None:
    """A notification of the shared database: wake idle workers, or long-polls of the job."""
    queue.notify(channel)
    if channel == "imgjobs_changed" and job_id:
        pool.announce(job_id)

"""The worker pool: N trio tasks taking job ids from the queue and running them.

Each worker claims the job's row, runs `imaging.process` in a worker process under the
job timeout, moves the output into place and records the outcome. The pool grows and
shrinks at run time: a retiring worker finishes its current job first, so no job is lost
or run twice. This is the only module that knows `imaging`.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import anyio
import msgspec
import trio

import imaging
from app.errors import QueueFull
from app.logs import log_event, monotonic_ms
from app.metrics import Metrics
from app.outputs import VariantResult, document_of, encode_results, output_keys
from app.queue import JobQueue
from app.runner import Runner
from app.settings import Settings
from app.shared_queue import SharedQueue
from app.store import JobRecord, JobStore
from imaging.document import seed_steps
from imaging.encode import resolve_format

__all__ = ["PoolStatistics", "WorkerPool", "WorkerStorage", "job_spec", "new_owner_id"]

# A claim outlives the job timeout by this much before another start may take the job over.
LEASE_MARGIN_S = 30.0
MAX_ATTEMPTS = 5


class PoolStatistics(msgspec.Struct, frozen=True, kw_only=True):
    size: int
    busy: int


def new_owner_id() -> str:
    """Who holds a claim: host and pid (to spot dead owners at start-up) and a nonce."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only when `owner` certainly ran on this host in a process that is gone."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid_text) != os.getpid() and _is_zombie(int(pid_text))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False


def job_spec(record: JobRecord, settings: Settings) -> imaging.JobSpec:
    """What a worker process is asked to do for a job's row."""
    document = document_of(record)
    if document is None:
        assert record.operation != "steps", "a job of steps has its document"
        steps = seed_steps(record.operation, record.width, record.height)
        renditions = {"default": imaging.Rendition(steps=steps, output_format=record.output_format)}
    else:
        renditions = {
            name: imaging.Rendition(
                steps=variant.steps,
                output=variant.output,
                # Decided at submit: the stored document names it (`jpg` spelled `jpeg`).
                output_format=resolve_format(variant.output, record.output_format),
            )
            for name, variant in (document.variants or {}).items()
        }
    watermark = settings.watermark_path
    return imaging.JobSpec(
        variants=renditions,
        jpeg_quality=settings.jpeg_quality,
        max_pixels=settings.max_pixels,
        max_output_pixels=settings.max_output_pixels,
        allowed_formats=frozenset(settings.allowed_formats),
        watermark_path=None if watermark is None else str(watermark),
        max_frames=settings.max_frames,
    )


class WorkerStorage(Protocol):
    """What workers need of the blob storage (`app.storage.BlobStorage` has it all)."""

    def temp_path(self, key: str) -> Path: ...
    async def commit(self, temp: Path, key: str) -> None: ...
    async def remove(self, *keys: str) -> None: ...
    async def discard(self, temp: Path) -> None: ...
    def local_file(self, key: str) -> AbstractAsyncContextManager[Path]: ...


class _Worker:
    def __init__(self, number: int) -> None:
        self.number = number
        self.busy = False
        self.retiring = False
        self.idle_scope = trio.CancelScope()
        self.job_id: str | None = None
        self.job_scope = trio.CancelScope()


class WorkerPool:
    """`size` worker tasks over one queue, resizable while serving."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: WorkerStorage,
        queue: JobQueue | SharedQueue,
        runner: Runner,
        metrics: Metrics | None = None,
        *,
        size: int | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._storage = storage
        self._queue = queue
        self._runner = runner
        # A pool without the service's metrics (a test's) counts into a registry nobody reads.
        self._metrics = Metrics() if metrics is None else metrics
        self.owner = new_owner_id()
        # An API node's pool runs no workers (size 0): it only follows jobs for long-polls.
        self._target = settings.worker_pool_size if size is None else size
        self._workers: list[_Worker] = []
        self._numbers = iter(range(1, 1 << 62))
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._finished: dict[str, trio.Event] = {}
        self._watchers: Counter[str] = Counter()
        #: Called when a job with a callback_url ended here (its webhook is due now).
        self.webhook_due: Callable[[], None] = lambda: None

    @contextmanager
    def watch(self, job_id: str) -> Iterator[trio.Event]:
        """An event set when a worker of this process starts or ends `job_id`: its status
        changed (re-read the row to see to what).

        Register before reading the job's row, so that a change in between is not missed.
        Jobs finished by another server process sharing the database are not seen here:
        callers re-read the row now and then.
        """
        event = self._finished.setdefault(job_id, trio.Event())
        self._watchers[job_id] += 1
        try:
            yield event
        finally:
            self._watchers[job_id] -= 1
            if self._watchers[job_id] == 0:
                del self._watchers[job_id]
                if self._finished.get(job_id) is event:
                    del self._finished[job_id]

    def announce(self, job_id: str) -> None:
        """`job_id`'s status changed (here, or on another node sharing the database)."""
        event = self._finished.pop(job_id, None)
        if event is not None:
            event.set()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(size=self._target, busy=sum(w.busy for w in self._workers))

    @property
    def lease_s(self) -> float:
        """How long a claim holds: renewed while running on a shared database; else it
        outlives the job timeout, after which another start may take the job over."""
        if isinstance(self._queue, SharedQueue):
            return self._settings.lease_s
        return self._settings.job_timeout_s + LEASE_MARGIN_S

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the workers until `stop` has let them finish (or this task is cancelled)."""
        async with trio.open_nursery() as renewal:
            if isinstance(self._queue, SharedQueue):
                renewal.start_soon(self._renew_leases, self._queue)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # Worker processes start (and import Pillow) now, not in the first jobs.
                nursery.start_soon(self._runner.warm_up, "imaging.process")
                self.resize(self._target)
                task_status.started()
            renewal.cancel_scope.cancel()  # every worker is done: no claim left to renew
        self._nursery = None

    async def _renew_leases(self, queue: SharedQueue) -> None:
        while True:
            await trio.sleep(self.lease_s / 3)
            if any(worker.busy for worker in self._workers):
                try:
                    await queue.renew(owner=self.owner, lease_s=self.lease_s)
                except Exception:
                    log_event("pool.renew_error", level=logging.ERROR, exc=True)

    def resize(self, size: int) -> None:
        """Grow or shrink to `size` workers; retiring workers finish their job first."""
        if size < 1:
            raise ValueError("a pool needs at least one worker")
        self._target = size
        self._runner.resize(size)
        if self._nursery is None or self._stopping:
            return
        active = [w for w in self._workers if not w.retiring]
        for worker in active[size:]:
            self._retire(worker)
        for _ in range(size - len(active)):
            worker = _Worker(next(self._numbers))
            self._workers.append(worker)
            self._nursery.start_soon(self._serve_worker, worker)
        log_event("pool.resized", size=size)

    def cancel(self, job_id: str) -> bool:
        """Abandon `job_id` if a worker here is running it (its process is killed)."""
        for worker in self._workers:
            if worker.job_id == job_id:
                worker.job_scope.cancel()
                return True
        return False

    def stop(self) -> None:
        """Take no more jobs from the queue; running jobs go on (queued ones stay pending)."""
        self._stopping = True
        for worker in self._workers:
            self._retire(worker)

    @staticmethod
    def _retire(worker: _Worker) -> None:
        worker.retiring = True
        if not worker.busy:
            worker.idle_scope.cancel()

    async def _serve_worker(self, worker: _Worker) -> None:
        while not worker.retiring:
            with worker.idle_scope:
                ticket = await self._queue.receive()
            if worker.idle_scope.cancelled_caught:
                break
            worker.idle_scope = trio.CancelScope()
            worker.busy = True
            try:
                record = await self._claim(ticket)
                if record is None:
                    continue  # deleted, or claimed by another server first
                worker.job_id = record.id
                with trio.CancelScope() as worker.job_scope:
                    await self._run_job(record)
            finally:
                worker.busy = False
                worker.job_id = None
        self._workers.remove(worker)

    async def _claim(self, ticket: str | int) -> JobRecord | None:
        """The job a worker takes: the queued id, or on a shared database the next job."""
        if isinstance(ticket, str):
            return await self._store.claim(ticket, owner=self.owner, lease_s=self.lease_s)
        assert isinstance(self._queue, SharedQueue)
        return await self._queue.claim(ticket, owner=self.owner, lease_s=self.lease_s)

    async def _run_job(self, record: JobRecord) -> None:
        job_id = record.id
        self.announce(job_id)  # pending -> processing, for those following the job
        started = time.monotonic()
        log_event(
            "job.started",
            job_id=job_id,
            operation=record.operation,
            queue_wait_ms=round((time.time() - record.created_at) * 1000, 1),
            attempt=record.attempts,
            process=self.owner,
        )
        self._metrics.job_started(queued_s=time.time() - record.created_at)
        keys = output_keys(record)
        temps = {name: self._storage.temp_path(key) for name, key in keys.items()}
        committed: list[str] = []
        try:
            outcome = await self._process(record, {name: str(t) for name, t in temps.items()})
            if isinstance(outcome, dict):
                for name in outcome:
                    await self._storage.commit(temps[name], keys[name])
                    committed.append(name)
                first = outcome[next(iter(outcome))]
                results = {
                    name: VariantResult(
                        format=result.format,
                        width=result.width,
                        height=result.height,
                        bytes=result.bytes,
                        key=keys[name],
                        blurhash=result.blurhash,
                    )
                    for name, result in outcome.items()
                }
                done = await self._store.complete(
                    job_id,
                    owner=self.owner,
                    width=first.width,
                    height=first.height,
                    size_bytes=first.bytes,
                    results=None if record.spec is None else encode_results(results),
                )
                if not done:
                    # Deleted meanwhile (or the claim was lost): the outputs have no owner.
                    await self._storage.remove(*keys.values())
                    return
                log_event(
                    "job.finished",
                    job_id=job_id,
                    operation=record.operation,
                    width=first.width,
                    height=first.height,
                    bytes=sum(result.bytes for result in outcome.values()),
                    variants=len(outcome),
                    processing_ms=monotonic_ms(started),
                )
            else:
                code, message = outcome
                await self._store.fail(job_id, code=code, message=message, owner=self.owner)
                log_event(
                    "job.failed",
                    level=logging.WARNING,
                    job_id=job_id,
                    operation=record.operation,
                    code=code,
                    message=message,
                    processing_ms=monotonic_ms(started),
                )
            self._metrics.job_ended(
                code=None if isinstance(outcome, dict) else outcome[0],
                processing_s=time.monotonic() - started,
            )
            self.announce(job_id)
            if record.callback_url is not None:
                self.webhook_due()
        except trio.Cancelled:
            # Shutdown deadline or deletion: the worker process is already killed; give
            # the job back (if it still exists) so that the next start runs it.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._store.release(job_id, owner=self.owner)
                log_event("job.released", job_id=job_id)
            raise
        finally:
            if len(committed) < len(keys):
                with trio.CancelScope(shield=True):
                    for name, temp in temps.items():
                        if name not in committed:
                            await self._storage.discard(temp)
                    # A job is all its outputs or none of them.
                    await self._storage.remove(*(keys[name] for name in committed))

    async def _process(
        self, record: JobRecord, temps: dict[str, str]
    ) -> dict[str, imaging.Result] | tuple[str, str]:
        spec = job_spec(record, self._settings)
        timeout = self._settings.job_timeout_s
        try:
            async with (
                self._storage.local_file(record.input_key) as source,
                self._runner.reserve() as slot,
            ):
                with trio.fail_after(timeout):
                    return await slot.run(imaging.process_variants, spec, str(source), temps)
        except trio.TooSlowError:
            return "timeout", f"processing took longer than the {timeout:g} s limit"
        except imaging.ImagingError as exc:
            return exc.code, exc.message
        except anyio.BrokenWorkerProcess:
            return "worker_crashed", "the worker process processing this image crashed"
        except MemoryError:
            return "out_of_memory", "the image needs more memory than a worker may use"
        except FileNotFoundError:
            return "input_missing", "the uploaded image is gone (deleted or expired)"
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return "storage_full", "no space left to store the output"
            log_event("job.error", level=logging.ERROR, job_id=record.id, exc=True)
            return "internal_error", "the output could not be written"
        except Exception:
            log_event("job.error", level=logging.ERROR, job_id=record.id, exc=True)
            return "internal_error", "processing failed for an unexpected reason"

    async def requeue(self, *, exclude_dead_owners: bool = True) -> int:
        """Queue jobs that need a worker: pending rows not queued here, claims of dead
        servers. Returns how many were queued; the rest wait for the next call."""
        if self._stopping:
            return 0
        if isinstance(self._queue, SharedQueue):
            # The rows are the queue: claims whose lease ran out (their node died, on this
            # machine or another) go back to pending, and the other nodes are told.
            await self._store.runnable(limit=0, exclude=())
        elif exclude_dead_owners:
            await self._release_dead_owners()
        failed = await self._store.fail_exhausted(
            max_attempts=MAX_ATTEMPTS,
            message=f"the job was interrupted {MAX_ATTEMPTS} times while processing",
        )
        for job_id in failed:
            log_event("job.failed", level=logging.WARNING, job_id=job_id, code="interrupted")
            self._metrics.job_ended(code="interrupted")
        free = self._queue.free_slots()
        if free <= 0 or isinstance(self._queue, SharedQueue):
            return 0
        runnable = await self._store.runnable(limit=free, exclude=self._queue.known_ids())
        queued = 0
        for job_id, key_name in runnable:
            # No `owner_limit`: a job already accepted is never refused for its key's share.
            try:
                with self._queue.reserve_nowait(job_id, key_name) as slot:
                    slot.put()
            except (QueueFull, ValueError):
                continue  # filled or queued meanwhile by a submit; the next sweep sees it
            queued += 1
        return queued

    async def _release_dead_owners(self) -> None:
        for owner in await self._store.owners():
            if owner != self.owner and owner_is_dead(owner):
                count = await self._store.release_owner(owner)
                log_event("jobs.recovered", owner=owner, jobs=count)

"""The service's background upkeep: the sweep that queues pending rows no queue holds,
the clean-up of what crashes left in storage, the expiry of old jobs, and the webhook
delivery loop's set-up."""

from __future__ import annotations

import logging
import time

import trio

from app.deliveries import Deliverer
from app.delivery_store import DeliveryRecord
from app.logs import log_event
from app.metrics import Metrics
from app.outputs import output_keys
from app.settings import Settings
from app.storage import BlobStorage
from app.store import JobDatabase, JobStore
from app.views import event_body
from app.webhooks import Signer
from app.workers import WorkerPool

__all__ = ["clean_storage", "deliverer_for", "expire", "sweep"]

# How often pending rows that no queue holds (left by a restart, a full queue at start-up,
# or a dead server sharing the database) are looked for.
SWEEP_INTERVAL_S = 2.0
# With other servers sharing the storage, only leftovers this old are surely abandoned.
SHARED_LEFTOVER_AGE_S = 3600.0


async def sweep(pool: WorkerPool) -> None:
    while True:
        try:
            await pool.requeue()
        except Exception:
            log_event("sweep.error", level=logging.ERROR, exc=True)
        await trio.sleep(SWEEP_INTERVAL_S)


async def clean_storage(storage: BlobStorage, store: JobStore, *, alone: bool) -> None:
    """Remove what crashes left: temporary files, and files of jobs that have no row."""
    temps, keys = await storage.leftovers(older_than_s=0 if alone else SHARED_LEFTOVER_AGE_S)
    known = await store.existing(keys)
    orphans = [key for job_id, job_keys in keys.items() if job_id not in known for key in job_keys]
    await storage.remove(*orphans)
    for temp in temps:
        await storage.discard(temp)
    if temps or orphans:
        log_event("storage.cleaned", temp_files=len(temps), orphan_files=len(orphans))


async def expire(store: JobStore, storage: BlobStorage, ttl_s: float) -> None:
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


def deliverer_for(settings: Settings, store: JobDatabase, metrics: Metrics) -> Deliverer | None:
    """The webhook delivery loop (none without WEBHOOK_SECRET: callbacks are refused)."""
    if settings.webhook_secret is None:
        return None

    async def payload_of(delivery: DeliveryRecord) -> bytes | None:
        record = await store.get(delivery.job_id)
        return None if record is None else event_body(record, delivery)

    return Deliverer(
        store.deliveries,
        signer=Signer(settings.webhook_secret),
        payload_of=payload_of,
        metrics=metrics,
        allow_private=settings.webhook_allow_private,
        retry_base_s=settings.webhook_retry_base_s,
    )

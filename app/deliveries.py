"""The durable webhook delivery loop: claims the deliveries owed, attempts them, retries.

The rows (`app.delivery_store`) are the truth. A loop claims the due ones with a lease and
runs each attempt in a task of its own, at most `concurrency` at a time, so a hanging
receiver costs one task for `attempt_timeout_s`, never the loop. The body is fixed at the
first attempt and every retry sends the same bytes under the same `webhook-id` (a new
`webhook-timestamp` each time). A 2xx ends the delivery; a failure is retried on
`app.webhooks.next_delay_s`'s schedule until `give_up_after_s` after the job ended.

Cancelling `serve` abandons the attempts in flight: their rows stay claimed by this process
until its lease runs out, or until the next start of the service finds the process dead and
takes them back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

import httpx
import msgspec
import trio

from app.delivery_store import DeliveryRecord, DeliveryStore
from app.logs import log_event
from app.metrics import Metrics, WebhookOutcome
from app.ssrf import Resolver, system_resolver
from app.webhooks import Signer, attempt_delivery, next_delay_s
from app.workers import new_owner_id, owner_is_dead

__all__ = ["Deliverer", "DelivererStatistics", "PayloadOf"]

#: A claim outlives the attempt's time limit by this much (the payload, the store's thread).
LEASE_MARGIN_S: Final = 20.0
#: What is shown for a delivery whose job was deleted before its body could be built.
JOB_DELETED: Final = "job deleted"

#: Builds the JSON body of a delivery not yet attempted; None when its job is gone.
PayloadOf = Callable[[DeliveryRecord], Awaitable[bytes | None]]


class DelivererStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Attempts running now, out of at most `concurrency`."""

    in_flight: int
    concurrency: int


class Deliverer:
    """Delivers the webhooks owed in `deliveries`, as long as `serve` runs."""

    def __init__(
        self,
        deliveries: DeliveryStore,
        *,
        signer: Signer,
        payload_of: PayloadOf,
        metrics: Metrics,
        allow_private: bool,
        retry_base_s: float = 5.0,
        give_up_after_s: float = 24 * 3600.0,
        attempt_timeout_s: float = 10.0,
        concurrency: int = 16,
        poll_s: float = 1.0,
        resolver: Resolver = system_resolver,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`poll_s` bounds how late a delivery owed by another process sharing the database
        is seen; `client` (default: one of `serve`'s own) sends the requests."""
        if concurrency < 1:
            raise ValueError("a deliverer needs a concurrency of at least 1")
        self._deliveries = deliveries
        self._signer = signer
        self._payload_of = payload_of
        self._metrics = metrics
        self._allow_private = allow_private
        self._retry_base_s = retry_base_s
        self._give_up_after_s = give_up_after_s
        self._attempt_timeout_s = attempt_timeout_s
        self._poll_s = poll_s
        self._resolver = resolver
        self._client = client
        self._limiter = trio.CapacityLimiter(concurrency)
        self._wake = trio.Event()
        #: Who holds this process's claims (host, pid and a nonce, as the workers').
        self.owner = new_owner_id()

    def nudge(self) -> None:
        """Look for due deliveries now (a job with a callback just ended here)."""
        self._wake.set()

    def statistics(self) -> DelivererStatistics:
        return DelivererStatistics(
            in_flight=self._limiter.borrowed_tokens,
            concurrency=int(self._limiter.total_tokens),
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; started once dead processes' claims are taken back."""
        async with self._open_client() as client, trio.open_nursery() as nursery:
            await self._release_dead_owners()
            task_status.started()
            while True:
                # A fresh event before claiming: a nudge from here on is never missed.
                self._wake = trio.Event()
                claimed = await self._start_due(nursery, client)
                await self._wait_for_work(claimed=claimed)

    @asynccontextmanager
    async def _open_client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
            return
        # No time limit of its own (each attempt runs under `attempt_timeout_s`), and no proxy
        # from the environment: a request goes to the very address `app.ssrf` checked.
        async with httpx.AsyncClient(timeout=None, trust_env=False) as client:  # noqa: S113
            yield client

    async def _release_dead_owners(self) -> None:
        for owner in await self._deliveries.owners():
            if owner != self.owner and owner_is_dead(owner):
                count = await self._deliveries.release_owner(owner)
                log_event("webhooks.recovered", owner=owner, deliveries=count)

    async def _start_due(self, nursery: trio.Nursery, client: httpx.AsyncClient) -> int:
        """Claim as many due deliveries as there are free slots and start them; how many."""
        free = int(self._limiter.available_tokens)
        if free == 0:
            return 0
        lease_s = self._attempt_timeout_s + LEASE_MARGIN_S
        records = await self._deliveries.claim_due(owner=self.owner, lease_s=lease_s, limit=free)
        for record in records:
            slot = object()  # the borrower of one token, for exactly this attempt
            self._limiter.acquire_on_behalf_of_nowait(slot)
            nursery.start_soon(self._deliver, client, record, slot)
        return len(records)

    async def _wait_for_work(self, *, claimed: int) -> None:
        """Sleep until the next delivery is due, `poll_s` passes, a nudge, or (when every
        slot is taken) an attempt ends."""
        if self._limiter.available_tokens == 0:
            await self._wake.wait()
            return
        due = await self._deliveries.next_due()
        if due is None:
            delay = self._poll_s
        elif due <= time.time() and claimed == 0:
            # Due, yet none could be claimed (another host's clock is ahead of ours, or the
            # row came due between the two queries): wait a poll rather than spin.
            delay = self._poll_s
        else:
            delay = min(self._poll_s, max(due - time.time(), 0.0))
        with trio.move_on_after(delay):
            await self._wake.wait()

    async def _deliver(
        self, client: httpx.AsyncClient, record: DeliveryRecord, slot: object
    ) -> None:
        try:
            await self._attempt(client, record)
        except Exception:
            # A bug or a store error costs this attempt only: the row stays claimed and comes
            # back when the lease runs out.
            log_event("webhook.error", level=logging.ERROR, exc=True, job_id=record.job_id)
        finally:
            self._limiter.release_on_behalf_of(slot)
            if self._limiter.available_tokens == 1:
                self._wake.set()  # the loop may be waiting for a free slot

    async def _attempt(self, client: httpx.AsyncClient, record: DeliveryRecord) -> None:
        """One attempt of a claimed delivery, and its outcome recorded."""
        body = record.payload
        if body is None:  # the first attempt fixes the bytes every retry sends
            body = await self._payload_of(record)
            if body is None:
                await self._record(record, delivered=False, last_status=JOB_DELETED)
                return
            if not await self._deliveries.set_payload(
                record.job_id, owner=self.owner, payload=body
            ):
                log_event("webhook.claim_lost", job_id=record.job_id)
                return
        delivered, last_status = await self._send(client, record, body)
        retry_at = None if delivered else self._retry_at(record, time.time())
        await self._record(
            record, delivered=delivered, last_status=last_status, next_attempt_at=retry_at
        )

    async def _send(
        self, client: httpx.AsyncClient, record: DeliveryRecord, body: bytes
    ) -> tuple[bool, str]:
        """POST `body` once, signed now: whether it was delivered, and what to show."""
        headers = self._signer.headers(record.webhook_id, int(time.time()), body)
        with trio.move_on_after(self._attempt_timeout_s):
            attempt = await attempt_delivery(
                client,
                record.url,
                body,
                headers,
                allow_private=self._allow_private,
                resolver=self._resolver,
            )
            return attempt.delivered, attempt.describe()
        return False, f"timeout after {self._attempt_timeout_s:g} s"

    async def _record(
        self,
        record: DeliveryRecord,
        *,
        delivered: bool,
        last_status: str,
        next_attempt_at: float | None = None,
    ) -> None:
        """Store an attempt's outcome (`next_attempt_at` None: delivered or given up)."""
        recorded = await self._deliveries.record(
            record.job_id,
            owner=self.owner,
            delivered=delivered,
            last_status=last_status,
            next_attempt_at=next_attempt_at,
        )
        if not recorded:  # the lease ran out (another process holds it), or the job was deleted
            log_event("webhook.claim_lost", job_id=record.job_id, last_status=last_status)
            return
        outcome: WebhookOutcome = (
            "delivered" if delivered else "failed" if next_attempt_at is None else "retried"
        )
        self._metrics.webhook_delivery(outcome)
        log_event(
            f"webhook.{outcome}",
            level=logging.WARNING if outcome == "failed" else logging.INFO,
            job_id=record.job_id,
            webhook_id=record.webhook_id,
            attempts=record.attempts + 1,
            last_status=last_status,
            retry_in_s=None if next_attempt_at is None else round(next_attempt_at - time.time(), 3),
        )

    def _retry_at(self, record: DeliveryRecord, now: float) -> float | None:
        """When to try again after a failed attempt; None once the delivery is too old."""
        if now - record.created_at >= self._give_up_after_s:
            return None
        return now + next_delay_s(record.attempts + 1, base_s=self._retry_base_s)

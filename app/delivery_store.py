"""Webhook deliveries owed, in the job database: one row per job with a `callback_url`.

A row is written in the transaction that ends its job (`app.store`), due at once. A
delivery loop (`app.deliveries`) claims due rows with a lease, as workers claim jobs, so a
process killed mid-attempt leaves a row another (or the next) process takes back; an
attempt's outcome is recorded only by the process holding the claim. A row answered 2xx is
`delivered` and never claimed again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Literal, Protocol

import msgspec

from app.sqlite import SqliteThread, transaction

__all__ = ["DeliveryRecord", "DeliveryStatus", "DeliveryStore", "SqliteDeliveryStore"]

DeliveryStatus = Literal["pending", "delivered", "failed"]


class DeliveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the `deliveries` table."""

    job_id: str
    webhook_id: str
    url: str
    event: str  # job.completed | job.failed
    status: DeliveryStatus
    created_at: float
    updated_at: float
    attempts: int = 0
    last_status: str | None = None
    next_attempt_at: float | None = None
    payload: bytes | None = None  # the signed body, fixed at the first attempt
    claimed_by: str | None = None
    lease_expires_at: float | None = None
    delivered_at: float | None = None


_COLUMNS = tuple(DeliveryRecord.__struct_fields__)


class DeliveryStore(Protocol):
    """What the delivery loop and the job views need from the deliveries owed."""

    async def claim_due(
        self, *, owner: str, lease_s: float, limit: int
    ) -> list[DeliveryRecord]: ...
    async def next_due(self) -> float | None: ...
    async def set_payload(self, job_id: str, *, owner: str, payload: bytes) -> bool: ...
    async def record(
        self,
        job_id: str,
        *,
        owner: str,
        delivered: bool,
        last_status: str,
        next_attempt_at: float | None,
    ) -> bool: ...
    async def of(self, job_ids: Iterable[str]) -> dict[str, DeliveryRecord]: ...
    async def owners(self) -> list[str]: ...
    async def release_owner(self, owner: str) -> int: ...


class SqliteDeliveryStore:
    """`DeliveryStore` on the job database's thread."""

    def __init__(self, thread: SqliteThread) -> None:
        self._run = thread.run

    async def claim_due(self, *, owner: str, lease_s: float, limit: int) -> list[DeliveryRecord]:
        """Up to `limit` pending deliveries whose time has come and that nobody holds (or
        whose holder's lease ran out), now held by `owner` for `lease_s`."""

        def query(c: sqlite3.Connection) -> list[DeliveryRecord]:
            now = time.time()
            with transaction(c):
                rows = c.execute(
                    "UPDATE deliveries SET claimed_by = ?, lease_expires_at = ?, updated_at = ?"
                    " WHERE job_id IN (SELECT job_id FROM deliveries WHERE status = 'pending'"
                    " AND next_attempt_at <= ? AND (claimed_by IS NULL OR lease_expires_at < ?)"
                    " ORDER BY next_attempt_at LIMIT ?) RETURNING *",
                    (owner, now + lease_s, now, now, now, limit),
                ).fetchall()
            return [_record(row) for row in rows]

        return await self._run(query)

    async def next_due(self) -> float | None:
        """When the next pending delivery is due (or its holder's lease runs out)."""
        row = await self._run(
            lambda c: c.execute(
                "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_expires_at, 0)))"
                " FROM deliveries WHERE status = 'pending'"
            ).fetchone()
        )
        return None if row[0] is None else float(row[0])

    async def set_payload(self, job_id: str, *, owner: str, payload: bytes) -> bool:
        """Fix the body every attempt of this delivery sends."""
        cursor = await self._run(
            lambda c: c.execute(
                "UPDATE deliveries SET payload = ? WHERE job_id = ? AND claimed_by = ?"
                " AND payload IS NULL",
                (payload, job_id, owner),
            )
        )
        return cursor.rowcount == 1

    async def record(
        self,
        job_id: str,
        *,
        owner: str,
        delivered: bool,
        last_status: str,
        next_attempt_at: float | None,
    ) -> bool:
        """One attempt's outcome: `delivered`, else due again at `next_attempt_at` (None:
        given up, `failed`). Only the holder of the claim records; the claim ends."""

        def query(c: sqlite3.Connection) -> bool:
            now = time.time()
            status = (
                "delivered" if delivered else "pending" if next_attempt_at is not None else "failed"
            )
            cursor = c.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_status = ?,"
                " next_attempt_at = ?, delivered_at = ?, claimed_by = NULL,"
                " lease_expires_at = NULL, updated_at = ?"
                " WHERE job_id = ? AND claimed_by = ? AND status = 'pending'",
                (
                    status,
                    last_status,
                    next_attempt_at if status == "pending" else None,
                    now if delivered else None,
                    now,
                    job_id,
                    owner,
                ),
            )
            return cursor.rowcount == 1

        return await self._run(query)

    async def of(self, job_ids: Iterable[str]) -> dict[str, DeliveryRecord]:
        """The deliveries of these jobs (those that have one), by job id."""
        wanted = list(job_ids)

        def query(c: sqlite3.Connection) -> dict[str, DeliveryRecord]:
            found: dict[str, DeliveryRecord] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT * FROM deliveries WHERE job_id IN ({marks})"  # noqa: S608 - only marks
                found.update((row["job_id"], _record(row)) for row in c.execute(sql, chunk))
            return found

        return await self._run(query) if wanted else {}

    async def owners(self) -> list[str]:
        """Every process holding a claim on a pending delivery."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT DISTINCT claimed_by FROM deliveries"
                " WHERE status = 'pending' AND claimed_by IS NOT NULL"
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def release_owner(self, owner: str) -> int:
        """Let go of the claims of `owner` (a dead process): its deliveries are due again."""
        cursor = await self._run(
            lambda c: c.execute(
                "UPDATE deliveries SET claimed_by = NULL, lease_expires_at = NULL"
                " WHERE status = 'pending' AND claimed_by = ?",
                (owner,),
            )
        )
        return cursor.rowcount


def _record(row: sqlite3.Row) -> DeliveryRecord:
    return msgspec.convert({name: row[name] for name in _COLUMNS}, DeliveryRecord)

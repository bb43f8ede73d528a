"""Job rows in SQLite, driven from trio through the database's own thread (`app.sqlite`).

The row, not the in-memory queue, is the truth about a job: claims are compare-and-set
updates, so several server processes sharing one database never process a job twice. A job
that ends with a `callback_url` gets its webhook delivery row in the same transaction, so a
delivery owed is never lost to a crash between the two.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import msgspec
import trio

from app.delivery_store import DeliveryStore, SqliteDeliveryStore
from app.models import JobKind, JobStatus, OutputFormat
from app.sqlite import SqliteThread, connect, connect_reader, transaction

__all__ = [
    "JobDatabase",
    "JobRecord",
    "JobStore",
    "SharedJobStore",
    "SqliteJobStore",
    "open_job_store",
]


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the `jobs` table."""

    id: str
    status: JobStatus
    operation: JobKind
    width: int
    height: int
    output_format: OutputFormat
    input_key: str
    output_key: str
    input_bytes: int
    created_at: float
    updated_at: float
    attempts: int = 0
    claimed_by: str | None = None
    lease_expires_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    result_width: int | None = None
    result_height: int | None = None
    result_bytes: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    spec: bytes | None = None
    results: bytes | None = None
    owner: str | None = None  # the API key's name; None without API_KEYS
    idempotency_key: str | None = None
    request_sha256: bytes | None = None  # the upload and the whole request, for replays
    input_sha256: bytes | None = None  # the upload alone, for result reuse
    callback_url: str | None = None
    metadata: bytes | None = None  # the caller's JSON object, as sent
    reused: bool = False


_COLUMNS = tuple(JobRecord.__struct_fields__)
# Built from the struct's own field names, never from input.
_INSERT = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(':' + name for name in _COLUMNS)})"
)
# The webhook a job that just ended owes (if it has a callback_url): due at once. Its
# `webhook-id` is stable across retries and unique per job (one event per job).
_OWE_DELIVERY = (
    "INSERT OR IGNORE INTO deliveries (job_id, webhook_id, url, event, status, next_attempt_at,"
    " created_at, updated_at) SELECT id, 'msg_' || replace(id, '-', ''), callback_url,"
    " 'job.' || status, 'pending', :now, :now, :now FROM jobs"
    " WHERE id = :id AND callback_url IS NOT NULL AND status IN ('completed', 'failed')"
)


class JobStore(Protocol):
    """What the service needs from a job database."""

    async def insert(
        self, record: JobRecord, *, replay_since: float | None = None
    ) -> JobRecord | None: ...
    async def get(self, job_id: str) -> JobRecord | None: ...
    async def delete(self, job_id: str) -> bool: ...
    async def claim(self, job_id: str, *, owner: str, lease_s: float) -> JobRecord | None: ...
    async def complete(
        self,
        job_id: str,
        *,
        owner: str,
        width: int,
        height: int,
        size_bytes: int,
        results: bytes | None = None,
    ) -> bool: ...
    async def fail(
        self, job_id: str, *, code: str, message: str, owner: str | None = None
    ) -> bool: ...
    async def release(self, job_id: str, *, owner: str) -> bool: ...
    async def runnable(
        self, *, limit: int, exclude: Iterable[str]
    ) -> list[tuple[str, str | None]]: ...
    async def owners(self) -> list[str]: ...
    async def release_owner(self, owner: str) -> int: ...
    async def fail_exhausted(self, *, max_attempts: int, message: str) -> list[str]: ...
    async def count(self, status: JobStatus | None = None) -> int: ...
    async def integrity_check(self) -> str: ...
    async def expired(self, *, finished_before: float, limit: int) -> list[JobRecord]: ...
    async def existing(self, ids: Iterable[str]) -> set[str]: ...
    async def page(
        self,
        *,
        limit: int,
        status: JobStatus | None = None,
        before: tuple[float, str] | None = None,
        owner: str | None = None,
    ) -> list[JobRecord]: ...
    async def replayable(
        self, *, owner: str | None, idempotency_key: str, since: float
    ) -> JobRecord | None: ...
    async def reusable(
        self, *, owner: str | None, input_sha256: bytes, spec: bytes
    ) -> JobRecord | None: ...


class JobDatabase(JobStore, Protocol):
    """A job store with the webhook deliveries owed beside it (what backends open)."""

    @property
    def deliveries(self) -> DeliveryStore: ...


class SharedJobStore(JobDatabase, Protocol):
    """A job database several nodes share as their queue (PostgreSQL): workers claim the
    next runnable row themselves instead of taking ids from this process's memory."""

    async def claim_next(self, *, owner: str, lease_s: float) -> JobRecord | None:
        """Claim the next pending job, fairly across API keys (the key with the fewest
        jobs processing first, then the oldest job); None when none is pending."""
        ...

    async def pending_by_owner(self) -> dict[str | None, int]:
        """How many jobs are pending, per API key (None: without a key)."""
        ...

    async def renew(self, *, owner: str, lease_s: float) -> int:
        """Extend the lease of every job `owner` holds; how many it holds."""
        ...

    async def serve_notifications(
        self,
        on_notify: Callable[[str, str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call `on_notify(channel, job_id)` for every notification of another node (or
        this one): `imgjobs_jobs` when a job became claimable, `imgjobs_changed` when a
        job's status changed; `("imgjobs_jobs", "")` after a reconnection."""
        ...


class SqliteJobStore:
    """`JobStore` on one SQLite file: every write, and every query but a job's row, runs
    on the database's own thread.

    `get` (a primary-key read, 20 us) runs on the event loop's thread instead, on a
    read-only connection: in WAL mode a reader never waits for the writer, and a thread
    hand-off costs ten times the query (`GET /jobs/{id}` and every long-poll wake-up read
    a row). If the reader is ever busy, the read goes through the store's thread.
    """

    def __init__(self, thread: SqliteThread, reader: sqlite3.Connection | None = None) -> None:
        self._run = thread.run
        self._reader = reader
        #: The webhook deliveries owed, on the same database and thread.
        self.deliveries = SqliteDeliveryStore(thread)

    async def insert(
        self, record: JobRecord, *, replay_since: float | None = None
    ) -> JobRecord | None:
        """Insert a new job; None once inserted. With an idempotency key, the job of the
        same owner and key made since `replay_since` is answered instead (and nothing is
        inserted): several processes submitting one key at once make one job."""
        row = msgspec.structs.asdict(record)

        def query(c: sqlite3.Connection) -> JobRecord | None:
            owes = record.callback_url is not None and record.status in ("completed", "failed")
            if record.idempotency_key is None and not owes:
                c.execute(_INSERT, row)  # the common case: one statement, no transaction
                return None
            with transaction(c):
                if record.idempotency_key is not None:
                    earlier = _replayable(
                        c, record.owner, record.idempotency_key, replay_since or 0.0
                    )
                    if earlier is not None:
                        return earlier
                    # an expired use of the key: the key is free again
                    c.execute(
                        "UPDATE jobs SET idempotency_key = NULL"
                        " WHERE owner IS ? AND idempotency_key = ?",
                        (record.owner, record.idempotency_key),
                    )
                c.execute(_INSERT, row)
                if owes:  # completed at submit (reused): its webhook is due now
                    c.execute(_OWE_DELIVERY, {"id": record.id, "now": record.created_at})
            return None

        return await self._run(query)

    async def replayable(
        self, *, owner: str | None, idempotency_key: str, since: float
    ) -> JobRecord | None:
        """The job `owner` made with `idempotency_key` since `since`, if any."""
        return await self._run(lambda c: _replayable(c, owner, idempotency_key, since))

    async def reusable(
        self, *, owner: str | None, input_sha256: bytes, spec: bytes
    ) -> JobRecord | None:
        """The newest completed job of `owner` made from the same upload and document."""

        def query(c: sqlite3.Connection) -> JobRecord | None:
            row = c.execute(
                "SELECT * FROM jobs WHERE input_sha256 = ? AND owner IS ? AND spec = ?"
                " AND status = 'completed' ORDER BY finished_at DESC LIMIT 1",
                (input_sha256, owner, spec),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._run(query)

    async def get(self, job_id: str) -> JobRecord | None:
        def query(c: sqlite3.Connection) -> JobRecord | None:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _record(row)

        if self._reader is not None:
            await trio.lowlevel.checkpoint()
            try:
                return query(self._reader)
            except sqlite3.OperationalError:
                pass  # busy (a checkpoint or a recovery): the store's thread waits for it
        return await self._run(query)

    async def delete(self, job_id: str) -> bool:
        """Remove a job, and the webhook it owes if any."""

        def query(c: sqlite3.Connection) -> bool:
            with transaction(c):
                c.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
                return c.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 1

        return await self._run(query)

    async def claim(self, job_id: str, *, owner: str, lease_s: float) -> JobRecord | None:
        """Move a pending job to processing for `owner`; None if someone else has it."""

        def query(c: sqlite3.Connection) -> JobRecord | None:
            now = time.time()
            row = c.execute(
                "UPDATE jobs SET status = 'processing', claimed_by = ?, lease_expires_at = ?,"
                " attempts = attempts + 1, started_at = ?, updated_at = ?"
                " WHERE id = ? AND status = 'pending' RETURNING *",
                (owner, now + lease_s, now, now, job_id),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._run(query)

    async def complete(
        self,
        job_id: str,
        *,
        owner: str,
        width: int,
        height: int,
        size_bytes: int,
        results: bytes | None = None,
    ) -> bool:
        def query(c: sqlite3.Connection) -> bool:
            now = time.time()
            with transaction(c):
                cursor = c.execute(
                    "UPDATE jobs SET status = 'completed', result_width = ?, result_height = ?,"
                    " result_bytes = ?, results = ?, finished_at = ?, updated_at = ?,"
                    " lease_expires_at = NULL WHERE id = ? AND status = 'processing'"
                    " AND claimed_by = ?",
                    (width, height, size_bytes, results, now, now, job_id, owner),
                )
                if cursor.rowcount == 1:
                    c.execute(_OWE_DELIVERY, {"id": job_id, "now": now})
            return cursor.rowcount == 1

        return await self._run(query)

    async def fail(self, job_id: str, *, code: str, message: str, owner: str | None = None) -> bool:
        """Mark a job failed; with `owner`, only if that owner still holds the claim."""

        def query(c: sqlite3.Connection) -> bool:
            now = time.time()
            sql = (
                "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?,"
                " finished_at = ?, updated_at = ?, lease_expires_at = NULL WHERE id = ?"
            )
            params: tuple[Any, ...] = (code, message, now, now, job_id)
            if owner is None:
                sql += " AND status IN ('pending', 'processing')"
            else:
                sql += " AND status = 'processing' AND claimed_by = ?"
                params += (owner,)
            with transaction(c):
                failed = c.execute(sql, params).rowcount == 1
                if failed:
                    c.execute(_OWE_DELIVERY, {"id": job_id, "now": now})
            return failed

        return await self._run(query)

    async def release(self, job_id: str, *, owner: str) -> bool:
        """Give a claimed job back (pending) so that another worker or start runs it."""

        def query(c: sqlite3.Connection) -> bool:
            cursor = c.execute(
                "UPDATE jobs SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE id = ? AND status = 'processing' AND claimed_by = ?",
                (time.time(), job_id, owner),
            )
            return cursor.rowcount == 1

        return await self._run(query)

    async def runnable(self, *, limit: int, exclude: Iterable[str]) -> list[tuple[str, str | None]]:
        """Oldest jobs that should be queued (with their owners): pending ones, and
        processing ones whose claim has expired (their server died); the latter are put
        back to pending."""
        skip = set(exclude)

        def query(c: sqlite3.Connection) -> list[tuple[str, str | None]]:
            now = time.time()
            c.execute(
                "UPDATE jobs SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE status = 'processing' AND lease_expires_at < ?",
                (now, now),
            )
            rows = c.execute(
                "SELECT id, owner FROM jobs WHERE status = 'pending' ORDER BY created_at LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
            return [(row["id"], row["owner"]) for row in rows if row["id"] not in skip][:limit]

        return await self._run(query)

    async def owners(self) -> list[str]:
        """Every server process that holds a claim on a processing job."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT DISTINCT claimed_by FROM jobs WHERE status = 'processing'"
            ).fetchall()
        )
        return [row[0] for row in rows if row[0] is not None]

    async def release_owner(self, owner: str) -> int:
        """Put every job claimed by `owner` (a dead process) back to pending."""
        cursor = await self._run(
            lambda c: c.execute(
                "UPDATE jobs SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE status = 'processing' AND claimed_by = ?",
                (time.time(), owner),
            )
        )
        return cursor.rowcount

    async def fail_exhausted(self, *, max_attempts: int, message: str) -> list[str]:
        """Fail pending jobs that were already started `max_attempts` times."""

        def query(c: sqlite3.Connection) -> list[str]:
            now = time.time()
            with transaction(c):
                rows = c.execute(
                    "UPDATE jobs SET status = 'failed', error_code = 'interrupted',"
                    " error_message = ?, finished_at = ?, updated_at = ?"
                    " WHERE status = 'pending' AND attempts >= ? RETURNING id",
                    (message, now, now, max_attempts),
                ).fetchall()
                for row in rows:
                    c.execute(_OWE_DELIVERY, {"id": row["id"], "now": now})
            return [row["id"] for row in rows]

        return await self._run(query)

    async def count(self, status: JobStatus | None = None) -> int:
        """How many jobs there are (in `status`, if given)."""
        if status is None:
            row = await self._run(lambda c: c.execute("SELECT COUNT(*) FROM jobs").fetchone())
        else:
            row = await self._run(
                lambda c: c.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)
                ).fetchone()
            )
        return int(row[0])

    async def expired(self, *, finished_before: float, limit: int) -> list[JobRecord]:
        """Finished jobs (completed or failed) that ended before `finished_before`, but not
        those still owing a webhook (the receiver may be down for a day)."""

        def query(c: sqlite3.Connection) -> list[JobRecord]:
            rows = c.execute(
                "SELECT * FROM jobs WHERE status IN ('completed', 'failed')"
                " AND finished_at < ? AND id NOT IN"
                " (SELECT job_id FROM deliveries WHERE status = 'pending')"
                " ORDER BY finished_at LIMIT ?",
                (finished_before, limit),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._run(query)

    async def existing(self, ids: Iterable[str]) -> set[str]:
        """Which of `ids` have a row."""
        wanted = list(ids)

        def query(c: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT id FROM jobs WHERE id IN ({marks})"  # noqa: S608 - only marks
                found.update(row[0] for row in c.execute(sql, chunk))
            return found

        return await self._run(query)

    async def integrity_check(self) -> str:
        row = await self._run(lambda c: c.execute("PRAGMA integrity_check").fetchone())
        return str(row[0])

    async def page(
        self,
        *,
        limit: int,
        status: JobStatus | None = None,
        before: tuple[float, str] | None = None,
        owner: str | None = None,
    ) -> list[JobRecord]:
        """Up to `limit` jobs, newest first, created before `before` (created_at, id); only
        `owner`'s if given."""
        created, job_id = before if before is not None else (float("inf"), "")
        where = "(created_at, id) < (?, ?)"
        params: tuple[Any, ...] = (created, job_id)
        if status is not None:
            where += " AND status = ?"
            params += (status,)
        if owner is not None:
            where += " AND owner = ?"
            params += (owner,)
        sql = f"SELECT * FROM jobs WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?"  # noqa: S608 - fixed text

        def query(c: sqlite3.Connection) -> list[JobRecord]:
            return [_record(row) for row in c.execute(sql, (*params, limit)).fetchall()]

        return await self._run(query)


def _replayable(
    c: sqlite3.Connection, owner: str | None, idempotency_key: str, since: float
) -> JobRecord | None:
    row = c.execute(
        "SELECT * FROM jobs WHERE owner IS ? AND idempotency_key = ? AND created_at >= ?",
        (owner, idempotency_key, since),
    ).fetchone()
    return None if row is None else _record(row)


def _record(row: sqlite3.Row) -> JobRecord:
    values = dict(zip(_COLUMNS, (row[name] for name in _COLUMNS), strict=True))
    values["reused"] = bool(values["reused"])
    return msgspec.convert(values, JobRecord)


@asynccontextmanager
async def open_job_store(path: Path) -> AsyncIterator[SqliteJobStore]:
    """Open (creating if needed) the job database; closed when the block exits."""
    conn = await trio.to_thread.run_sync(connect, path)
    reader = connect_reader(path) if path != Path(":memory:") else None
    thread = SqliteThread(conn)
    try:
        yield SqliteJobStore(thread, reader)
    finally:
        thread.close()
        if reader is not None:
            reader.close()

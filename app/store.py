"""Job rows in SQLite, driven from trio through one dedicated thread.

aiosqlite and SQLAlchemy's async layer do not run under trio, so the stdlib `sqlite3`
connection is owned by a single thread that executes one request at a time; trio tasks hand
it closures and wait for the answer. The row, not the in-memory queue, is the truth about a
job: claims are compare-and-set updates, so several server processes sharing one database
never process a job twice.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import trio

from app.models import JobKind, JobStatus, OutputFormat

__all__ = ["JobRecord", "JobStore", "SqliteJobStore", "open_job_store"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    operation        TEXT NOT NULL,
    width            INTEGER NOT NULL,
    height           INTEGER NOT NULL,
    output_format    TEXT NOT NULL,
    input_key        TEXT NOT NULL,
    output_key       TEXT NOT NULL,
    input_bytes      INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    claimed_by       TEXT,
    lease_expires_at REAL,
    error_code       TEXT,
    error_message    TEXT,
    result_width     INTEGER,
    result_height    INTEGER,
    result_bytes     INTEGER,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""

# Each migration takes the schema from version N (its index) to N + 1; a database written by
# an older release is brought up to date when it is opened. Version 0 is the first release's.
MIGRATIONS = (
    # 0 -> 1: job documents (steps and output), as canonical JSON; NULL for the seed's jobs.
    "ALTER TABLE jobs ADD COLUMN spec BLOB",
    # 1 -> 2: what each variant of a completed job produced, as JSON; NULL for the seed's jobs.
    "ALTER TABLE jobs ADD COLUMN results BLOB",
    # 2 -> 3: listing jobs newest first (GET /jobs), a page at a time.
    "CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs (created_at, id)",
)


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


_COLUMNS = tuple(JobRecord.__struct_fields__)
# Built from the struct's own field names, never from input.
_INSERT = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(':' + name for name in _COLUMNS)})"
)


class JobStore(Protocol):
    """What the service needs from a job database."""

    async def insert(self, record: JobRecord) -> None: ...
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
    async def runnable(self, *, limit: int, exclude: Iterable[str]) -> list[str]: ...
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
    ) -> list[JobRecord]: ...


READER_BUSY_TIMEOUT_MS = 0


def _connect(path: Path) -> sqlite3.Connection:
    if path != Path(":memory:"):
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across process crashes (kill -9) in WAL mode; only a power loss
    # can roll back the last commits.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(SCHEMA)
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to the newest version, one migration at a time; several processes
    opening one database at once take turns (the write lock is held throughout)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, statement in enumerate(MIGRATIONS[version:], start=version):
            conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection for point reads on the event loop's own thread."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA query_only=ON")
    # Never wait on the event loop: a busy reader falls back to the store's thread.
    conn.execute(f"PRAGMA busy_timeout={READER_BUSY_TIMEOUT_MS}")
    return conn


class SqliteJobStore:
    """`JobStore` on one SQLite file: every write, and every query but a job's row, runs
    on the store's own thread.

    `get` (a primary-key read, 20 us) runs on the event loop's thread instead, on a
    read-only connection: in WAL mode a reader never waits for the writer, and a thread
    hand-off costs ten times the query (`GET /jobs/{id}` and every long-poll wake-up read
    a row). If the reader is ever busy, the read goes through the store's thread.
    """

    def __init__(self, conn: sqlite3.Connection, reader: sqlite3.Connection | None = None) -> None:
        self._conn = conn
        self._reader = reader
        self._requests: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sqlite", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            request()
        self._conn.close()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[Any] = []

        def request() -> None:
            try:
                outcome.append((True, fn(self._conn)))
            except BaseException as exc:  # handed back to the awaiting task
                outcome.append((False, exc))
            token.run_sync_soon(done.set)

        self._requests.put(request)
        # A query is short and, once queued, runs to completion; waiting for it even when
        # cancelled keeps every caller's view of the row consistent with the database.
        with trio.CancelScope(shield=True):
            await done.wait()
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    async def insert(self, record: JobRecord) -> None:
        row = msgspec.structs.asdict(record)
        await self._run(lambda c: c.execute(_INSERT, row))

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
        cursor = await self._run(lambda c: c.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))
        return cursor.rowcount == 1

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
            cursor = c.execute(
                "UPDATE jobs SET status = 'completed', result_width = ?, result_height = ?,"
                " result_bytes = ?, results = ?, finished_at = ?, updated_at = ?,"
                " lease_expires_at = NULL WHERE id = ? AND status = 'processing'"
                " AND claimed_by = ?",
                (width, height, size_bytes, results, now, now, job_id, owner),
            )
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
            return c.execute(sql, params).rowcount == 1

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

    async def runnable(self, *, limit: int, exclude: Iterable[str]) -> list[str]:
        """Oldest jobs that should be queued: pending ones, and processing ones whose
        claim has expired (their server died); the latter are put back to pending."""
        skip = set(exclude)

        def query(c: sqlite3.Connection) -> list[str]:
            now = time.time()
            c.execute(
                "UPDATE jobs SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE status = 'processing' AND lease_expires_at < ?",
                (now, now),
            )
            rows = c.execute(
                "SELECT id FROM jobs WHERE status = 'pending' ORDER BY created_at LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
            return [row["id"] for row in rows if row["id"] not in skip][:limit]

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
            rows = c.execute(
                "UPDATE jobs SET status = 'failed', error_code = 'interrupted',"
                " error_message = ?, finished_at = ?, updated_at = ?"
                " WHERE status = 'pending' AND attempts >= ? RETURNING id",
                (message, now, now, max_attempts),
            ).fetchall()
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
        """Finished jobs (completed or failed) that ended before `finished_before`."""

        def query(c: sqlite3.Connection) -> list[JobRecord]:
            rows = c.execute(
                "SELECT * FROM jobs WHERE status IN ('completed', 'failed')"
                " AND finished_at < ? ORDER BY finished_at LIMIT ?",
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
    ) -> list[JobRecord]:
        """Up to `limit` jobs, newest first, created before `before` (created_at, id)."""
        created, job_id = before if before is not None else (float("inf"), "")
        where = "(created_at, id) < (?, ?)" + ("" if status is None else " AND status = ?")
        params: tuple[Any, ...] = (created, job_id) + (() if status is None else (status,))
        sql = f"SELECT * FROM jobs WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?"  # noqa: S608 - fixed text

        def query(c: sqlite3.Connection) -> list[JobRecord]:
            return [_record(row) for row in c.execute(sql, (*params, limit)).fetchall()]

        return await self._run(query)


def _record(row: sqlite3.Row) -> JobRecord:
    return msgspec.convert(
        dict(zip(_COLUMNS, (row[name] for name in _COLUMNS), strict=True)), JobRecord
    )


@asynccontextmanager
async def open_job_store(path: Path) -> AsyncIterator[SqliteJobStore]:
    """Open (creating if needed) the job database; closed when the block exits."""
    conn = await trio.to_thread.run_sync(_connect, path)
    reader = _connect_reader(path) if path != Path(":memory:") else None
    store = SqliteJobStore(conn, reader)
    try:
        yield store
    finally:
        store.close()
        if reader is not None:
            reader.close()

"""The SQLite database: its schema and migrations, and the one thread that owns a connection.

aiosqlite and SQLAlchemy's async layer do not run under trio, so the stdlib `sqlite3`
connection is owned by a single thread that executes one request at a time; trio tasks hand
it closures and wait for the answer (`SqliteThread.run`). The job queries (`app.store`) and
the webhook deliveries owed (`app.delivery_store`) share that thread and its connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from app.threads import Threads

__all__ = ["MIGRATIONS", "SCHEMA", "SqliteThread", "connect", "connect_reader", "transaction"]

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
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: job documents (steps and output), as canonical JSON; NULL for the seed's jobs.
    ("ALTER TABLE jobs ADD COLUMN spec BLOB",),
    # 1 -> 2: what each variant of a completed job produced, as JSON; NULL for the seed's jobs.
    ("ALTER TABLE jobs ADD COLUMN results BLOB",),
    # 2 -> 3: listing jobs newest first (GET /jobs), a page at a time.
    ("CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs (created_at, id)",),
    # 3 -> 4: integration. Who made a job (an API key's name; NULL without keys), its
    # idempotency key and request fingerprint, the upload's digest (result reuse), its
    # webhook and metadata; and the webhook deliveries owed, one per job that has a
    # callback_url, written in the same transaction that ends the job.
    (
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
        "ALTER TABLE jobs ADD COLUMN request_sha256 BLOB",
        "ALTER TABLE jobs ADD COLUMN input_sha256 BLOB",
        "ALTER TABLE jobs ADD COLUMN callback_url TEXT",
        "ALTER TABLE jobs ADD COLUMN metadata BLOB",
        "ALTER TABLE jobs ADD COLUMN reused INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_by_idempotency ON jobs (owner, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
        "CREATE INDEX jobs_by_input ON jobs (input_sha256) WHERE input_sha256 IS NOT NULL",
        "CREATE INDEX jobs_by_owner ON jobs (owner, created_at, id)",
        """CREATE TABLE deliveries (
            job_id           TEXT PRIMARY KEY,
            webhook_id       TEXT NOT NULL,
            url              TEXT NOT NULL,
            event            TEXT NOT NULL,
            status           TEXT NOT NULL,
            attempts         INTEGER NOT NULL DEFAULT 0,
            last_status      TEXT,
            next_attempt_at  REAL,
            payload          BLOB,
            claimed_by       TEXT,
            lease_expires_at REAL,
            created_at       REAL NOT NULL,
            updated_at       REAL NOT NULL,
            delivered_at     REAL
        )""",
        "CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)",
    ),
)


def connect(path: Path) -> sqlite3.Connection:
    """The writing connection: WAL, the schema created or migrated."""
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
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, statements in enumerate(MIGRATIONS[version:], start=version):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (the lock taken at once): committed at exit, else rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


READER_BUSY_TIMEOUT_MS = 0


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection for point reads on the event loop's own thread."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA query_only=ON")
    # Never wait on the event loop: a busy reader falls back to the store's thread.
    conn.execute(f"PRAGMA busy_timeout={READER_BUSY_TIMEOUT_MS}")
    return conn


class SqliteThread:
    """A connection owned by one thread; `run(fn)` executes `fn(conn)` there."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._thread = Threads(1, name="sqlite")

    def close(self) -> None:
        """Finish the queued queries, then close the connection."""
        self._thread.close()
        self._conn.close()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # A query is short and, once queued, runs to completion; waiting for it even when
        # cancelled keeps every caller's view of the row consistent with the database.
        return await self._thread.run(fn, self._conn)

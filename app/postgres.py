"""The PostgreSQL database: its pool and threads, schema and migrations, and the listener of
the notifications every node's changes send. The queries are `app.postgres_store`'s.

psycopg's asyncio API does not run under trio: every query runs on one of a few threads of
our own (`app.threads`), each taking a connection from a pool of the same size
(`PostgresDatabase.run`). Migrations run in one transaction behind an advisory lock, so
nodes starting at once take turns instead of racing on `CREATE TABLE`.

A trigger announces every job that becomes claimable (`imgjobs_jobs`) and every other
change of a job's status (`imgjobs_changed`), in the transaction that makes it, so the
notification goes out on commit only; `serve_notifications` listens on a connection of its
own, awaited natively by trio.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from app.logs import log_event
from app.threads import Threads

__all__ = [
    "CHANGED",
    "CLAIMABLE",
    "MIGRATIONS",
    "Connection",
    "DatabaseUnavailable",
    "PostgresDatabase",
    "open_postgres_database",
    "serve_notifications",
]

T = TypeVar("T")
Connection = psycopg.Connection[TupleRow]

# Threads running queries, and connections in the pool: one each.
POOL_SIZE = 8
# How long start-up waits for the database, unless DATABASE_URL sets connect_timeout.
START_TIMEOUT_S = 10
# The notification channels: a job became claimable; a job's status changed otherwise.
CLAIMABLE = "imgjobs_jobs"
CHANGED = "imgjobs_changed"
# The listening connection is re-established after this, doubling up to the maximum.
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0
# TCP keepalives of the listening connection, unless DATABASE_URL sets them. It only ever
# waits to read, so a network that drops without a word (a NAT or firewall forgetting the
# flow, the server's host gone: no FIN, no RST) would leave it waiting forever, the node
# deaf to the other nodes' jobs. With these the kernel probes it after 20 s of silence,
# every 5 s, and fails the socket after 4 unanswered probes: within about 40 s, and
# `serve_notifications` reconnects.
LISTEN_KEEPALIVES = (
    ("keepalives", 1),
    ("keepalives_idle", 20),
    ("keepalives_interval", 5),
    ("keepalives_count", 4),
)
# Advisory lock key of migrations ("imgjobs" in ASCII).
MIGRATION_LOCK = 0x696D676A6F6273

# Each migration takes the schema from version N (its index) to N + 1, in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the SQLite schema as of its version 4, times as epoch seconds (REAL there),
    # and the trigger that announces claimable jobs and status changes.
    (
        """CREATE TABLE jobs (
            id               TEXT PRIMARY KEY,
            status           TEXT NOT NULL,
            operation        TEXT NOT NULL,
            width            INTEGER NOT NULL,
            height           INTEGER NOT NULL,
            output_format    TEXT NOT NULL,
            input_key        TEXT NOT NULL,
            output_key       TEXT NOT NULL,
            input_bytes      BIGINT NOT NULL,
            attempts         INTEGER NOT NULL DEFAULT 0,
            claimed_by       TEXT,
            lease_expires_at DOUBLE PRECISION,
            error_code       TEXT,
            error_message    TEXT,
            result_width     INTEGER,
            result_height    INTEGER,
            result_bytes     BIGINT,
            created_at       DOUBLE PRECISION NOT NULL,
            updated_at       DOUBLE PRECISION NOT NULL,
            started_at       DOUBLE PRECISION,
            finished_at      DOUBLE PRECISION,
            spec             BYTEA,
            results          BYTEA,
            owner            TEXT,
            idempotency_key  TEXT,
            request_sha256   BYTEA,
            input_sha256     BYTEA,
            callback_url     TEXT,
            metadata         BYTEA,
            reused           BOOLEAN NOT NULL DEFAULT FALSE
        )""",
        "CREATE INDEX jobs_by_status ON jobs (status, created_at)",
        # claim_next: the oldest pending job of each API key, one index probe per key
        "CREATE INDEX jobs_pending ON jobs (owner, created_at) WHERE status = 'pending'",
        "CREATE INDEX jobs_by_creation ON jobs (created_at, id)",
        "CREATE INDEX jobs_by_owner ON jobs (owner, created_at, id)",
        "CREATE INDEX jobs_by_idempotency ON jobs (owner, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
        "CREATE INDEX jobs_by_input ON jobs (input_sha256) WHERE input_sha256 IS NOT NULL",
        "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE status IN ('completed', 'failed')",
        """CREATE TABLE deliveries (
            job_id           TEXT PRIMARY KEY,
            webhook_id       TEXT NOT NULL,
            url              TEXT NOT NULL,
            event            TEXT NOT NULL,
            status           TEXT NOT NULL,
            attempts         INTEGER NOT NULL DEFAULT 0,
            last_status      TEXT,
            next_attempt_at  DOUBLE PRECISION,
            payload          BYTEA,
            claimed_by       TEXT,
            lease_expires_at DOUBLE PRECISION,
            created_at       DOUBLE PRECISION NOT NULL,
            updated_at       DOUBLE PRECISION NOT NULL,
            delivered_at     DOUBLE PRECISION
        )""",
        "CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)",
        f"""CREATE FUNCTION imgjobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('{CHANGED}', OLD.id);
            ELSIF NEW.status = 'pending' THEN
                PERFORM pg_notify('{CLAIMABLE}', NEW.id);
            ELSE
                PERFORM pg_notify('{CHANGED}', NEW.id);
            END IF;
            RETURN NULL;
        END
        $$""",
        "CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs FOR EACH ROW"
        " WHEN (NEW.status = 'pending') EXECUTE FUNCTION imgjobs_notify()",
        "CREATE TRIGGER jobs_changed AFTER UPDATE OF status ON jobs FOR EACH ROW"
        " WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION imgjobs_notify()",
        "CREATE TRIGGER jobs_deleted AFTER DELETE ON jobs FOR EACH ROW"
        " EXECUTE FUNCTION imgjobs_notify()",
    ),
)


class DatabaseUnavailable(Exception):
    """The database of DATABASE_URL cannot be reached at start-up (the message shows the
    URL without its password)."""


class PostgresDatabase:
    """Queries on the pool's connections, each on one of as many threads."""

    def __init__(self, pool: ConnectionPool[Connection], threads: Threads) -> None:
        self._pool = pool
        self._threads = threads

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """`fn(conn)` on a thread, with a connection in autocommit mode; once queued it
        runs to the end even if the caller is cancelled (as `SqliteThread.run`)."""
        return await self._threads.run(self._call, fn)

    def _call(self, fn: Callable[[Connection], T]) -> T:
        with self._pool.connection() as conn:
            return fn(conn)


async def serve_notifications(
    url: str,
    on_notify: Callable[[str, str], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call `on_notify(channel, job_id)` for every notification of any node: `CLAIMABLE`
    when a job became claimable, `CHANGED` when a job's status changed otherwise;
    `(CLAIMABLE, "")` after a reconnection (some may have been missed). Started once
    listening; a lost connection is re-established with backoff, until cancelled."""
    conn = await _listening(url)
    task_status.started()
    try:
        while True:
            lost = await _relay(conn, on_notify)
            conn.close()
            conn = await _reconnect(url, _scrub(str(lost), url))
            on_notify(CLAIMABLE, "")
    finally:
        conn.close()


async def _reconnect(url: str, error: str) -> Connection:
    delay = RECONNECT_FIRST_S
    while True:
        log_event("postgres.listen_lost", level=logging.WARNING, error=error, retry_in_s=delay)
        await trio.sleep(delay)
        try:
            conn = await _listening(url)
        except psycopg.Error as exc:
            error = _scrub(str(exc), url)
            delay = min(delay * 2, RECONNECT_MAX_S)
        else:
            log_event("postgres.listen_restored")
            return conn


async def _relay(conn: Connection, on_notify: Callable[[str, str], None]) -> psycopg.Error:
    """Hand every notification `conn` receives to `on_notify` until the connection fails;
    the error. Waits on the socket in trio itself, not in a thread."""
    try:
        while True:
            for notify in conn.notifies(timeout=0):  # what arrived, without blocking
                on_notify(notify.channel, notify.payload)
            await trio.lowlevel.wait_readable(conn.pgconn.socket)
    except psycopg.Error as exc:
        return exc


async def _listening(url: str) -> Connection:
    """A connection of its own (it never goes back to a pool) LISTENing on both channels.

    Connecting blocks, so it happens on a thread the caller abandons if cancelled; a
    connection made after that is closed by the thread itself."""
    lock = threading.Lock()
    made: list[Connection] = []
    abandoned = False

    def connect() -> None:
        conn = psycopg.connect(url, autocommit=True, **_listen_options(url))
        try:
            conn.execute(f"LISTEN {CLAIMABLE}")
            conn.execute(f"LISTEN {CHANGED}")
        except BaseException:
            conn.close()
            raise
        with lock:
            if abandoned:
                conn.close()
            else:
                made.append(conn)

    try:
        await trio.to_thread.run_sync(connect, abandon_on_cancel=True)
    except BaseException:
        with lock:
            abandoned = True
            for conn in made:
                conn.close()
        raise
    return made[0]


def _connect_options(url: str) -> dict[str, Any]:
    """A connection timeout for start-up and reconnections, unless the URL sets one."""
    given = _given(url)
    return {} if "connect_timeout" in given else {"connect_timeout": START_TIMEOUT_S}


def _listen_options(url: str) -> dict[str, Any]:
    """`_connect_options`, and the TCP keepalives (`LISTEN_KEEPALIVES`) the URL does not set."""
    given = _given(url)
    keepalives = {name: value for name, value in LISTEN_KEEPALIVES if name not in given}
    return _connect_options(url) | keepalives


def _given(url: str) -> dict[str, Any]:
    """The connection parameters `url` sets."""
    try:
        return conninfo_to_dict(url)
    except psycopg.Error:
        return {}  # connecting will say what is wrong with it


def _scrub(text: str, url: str) -> str:
    """`text` with the password of `url` (in any of its spellings) replaced by `***`."""
    secrets: set[str] = set()
    with suppress(psycopg.Error):
        secrets.add(str(conninfo_to_dict(url).get("password") or ""))
    try:
        password = urlsplit(url).password or ""
    except ValueError:
        password = ""
    secrets.update((password, unquote(password)))
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _migrate(conn: Connection) -> None:
    """Bring the schema to the newest version in one transaction; nodes starting at once
    take turns on an advisory lock (concurrent `CREATE TABLE IF NOT EXISTS` races)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        version = 0 if row is None else int(row[0])
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        if version < len(MIGRATIONS):
            conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))


def _prepare(url: str) -> None:
    """Connect once and migrate; an unreachable database is a clear start-up error."""
    try:
        with psycopg.connect(url, autocommit=True, **_connect_options(url)) as conn:
            _migrate(conn)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot use the database of DATABASE_URL ({_scrub(url, url)}): {_scrub(str(exc), url)}"
        ) from None


def _open_pool(pool: ConnectionPool[Connection], url: str) -> None:
    try:
        pool.open(wait=True, timeout=START_TIMEOUT_S)
    except PoolTimeout:
        raise DatabaseUnavailable(
            f"the database of DATABASE_URL ({_scrub(url, url)}) gave no connection"
            f" within {START_TIMEOUT_S} s"
        ) from None


@asynccontextmanager
async def open_postgres_database(url: str) -> AsyncIterator[PostgresDatabase]:
    """Connect to the database of `url` (DATABASE_URL), migrating it if needed; closed
    when the block exits. `DatabaseUnavailable` if it cannot be reached."""
    threads = Threads(POOL_SIZE, name="postgres")
    pool: ConnectionPool[Connection] = ConnectionPool(
        url,
        min_size=1,
        max_size=POOL_SIZE,
        open=False,
        kwargs={"autocommit": True, **_connect_options(url)},
        name="imgjobs",
    )
    try:
        await threads.run(_prepare, url)
        await threads.run(_open_pool, pool, url)
        yield PostgresDatabase(pool, threads)
    finally:
        threads.close()  # the queries queued finish first
        pool.close()

"""Job rows and webhook deliveries in PostgreSQL, shared by every node of a deployment,
queried on the database's threads (`app.postgres`).

The rows are the queue: a pending row is a job waiting, and a worker of any node claims one
with `SELECT ... FOR UPDATE SKIP LOCKED` (`claim_next`), so concurrent claimers never wait
for each other and never get the same job. A claim is a lease on the database's clock, not
the node's (nodes on different machines disagree about the time): the holder renews it, and
once it runs out any node puts the job back (`runnable`). A job that ends with a
`callback_url` gets its webhook delivery row in the same statement.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio
from psycopg.rows import class_row

from app.delivery_store import DeliveryRecord
from app.models import JobStatus
from app.postgres import Connection, PostgresDatabase, open_postgres_database, serve_notifications
from app.store import JobRecord

__all__ = ["PostgresDeliveryStore", "PostgresJobStore", "open_postgres_store"]

# Advisory lock key: the class of idempotency keys (migrations use another, `app.postgres`).
IDEMPOTENCY_LOCK = 0x696D6731
# The database's clock, in epoch seconds like the node's `time.time()`.
DB_NOW = "extract(epoch from clock_timestamp())::double precision"

_COLUMNS = tuple(JobRecord.__struct_fields__)
_DELIVERY_COLUMNS = tuple(DeliveryRecord.__struct_fields__)
# Built from the structs' own field names, never from input.
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"  # noqa: S608
_RETURNING = f" RETURNING {', '.join(_COLUMNS)}"
_INSERT = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(f'%({name})s' for name in _COLUMNS)})"
)
_DELIVERY_RETURNING = " RETURNING " + ", ".join(f"deliveries.{name}" for name in _DELIVERY_COLUMNS)
_CLAIM = (
    "UPDATE jobs SET status = 'processing', claimed_by = %(owner)s,"  # noqa: S608
    f" lease_expires_at = {DB_NOW} + %(lease_s)s, attempts = attempts + 1,"
    " started_at = %(now)s, updated_at = %(now)s"
)
_RELEASE = (
    "UPDATE jobs SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL,"
    " updated_at = %(now)s"
)
# The oldest pending job of each API key (a skip scan of `jobs_pending`: one probe per
# key, not a read of every pending row; NULL, no key, is a group of its own), ranked: the
# key with the fewest jobs processing first, then the oldest job. The first of those no
# other claimer has locked is claimed (looked up by primary key, in rank order); if every
# one is locked, the oldest pending job nobody has locked.
_CLAIM_NEXT = f"""
WITH RECURSIVE heads (owner, id, created_at) AS (
    (SELECT owner, id, created_at FROM jobs WHERE status = 'pending' AND owner IS NOT NULL
     ORDER BY owner, created_at LIMIT 1)
    UNION ALL
    SELECT step.owner, step.id, step.created_at FROM heads, LATERAL (
        SELECT owner, id, created_at FROM jobs
        WHERE status = 'pending' AND owner > heads.owner
        ORDER BY owner, created_at LIMIT 1) AS step
), candidates AS (
    SELECT owner, id, created_at FROM heads
    UNION ALL
    (SELECT owner, id, created_at FROM jobs WHERE status = 'pending' AND owner IS NULL
     ORDER BY owner, created_at LIMIT 1)
), busy AS (
    SELECT owner, count(*) AS processing FROM jobs WHERE status = 'processing' GROUP BY owner
), ranked (ids) AS (
    SELECT array_agg(c.id ORDER BY coalesce(b.processing, 0), c.created_at, c.id)
    FROM candidates c LEFT JOIN busy b ON b.owner IS NOT DISTINCT FROM c.owner
)
{_CLAIM} WHERE status = 'pending' AND id = coalesce(
    (SELECT j.id FROM ranked, jobs j WHERE j.id = ANY(ranked.ids) AND j.status = 'pending'
     ORDER BY array_position(ranked.ids, j.id) LIMIT 1 FOR UPDATE OF j SKIP LOCKED),
    (SELECT id FROM jobs WHERE status = 'pending' ORDER BY created_at
     LIMIT 1 FOR UPDATE SKIP LOCKED))
{_RETURNING}"""  # noqa: S608 - fixed text


def _ending(statement: str) -> str:
    """`statement` (an update or insert of jobs) and, in the same statement, the webhook
    each job it ended owes, due at once: `webhook-id` stable across retries, one per job.
    Yields the ids of the jobs it changed."""
    return (
        f"WITH ended AS ({statement} RETURNING id, status, callback_url), owed AS ("  # noqa: S608
        " INSERT INTO deliveries (job_id, webhook_id, url, event, status, next_attempt_at,"
        " created_at, updated_at) SELECT id, 'msg_' || replace(id, '-', ''), callback_url,"
        " 'job.' || status, 'pending', %(now)s, %(now)s, %(now)s FROM ended"
        " WHERE callback_url IS NOT NULL AND status IN ('completed', 'failed')"
        " ON CONFLICT (job_id) DO NOTHING) SELECT id FROM ended"
    )


def _owner_is(owner: str | None) -> str:
    """SQLite's `owner IS ?`, in a form an index serves (`IS NOT DISTINCT FROM` never is)."""
    return "owner IS NULL" if owner is None else "owner = %(owner)s"


class PostgresJobStore:
    """`SharedJobStore` on PostgreSQL: the semantics of `SqliteJobStore`, plus claims of
    the next job by any node and notifications of every node's changes."""

    def __init__(self, database: PostgresDatabase, url: str) -> None:
        self._run = database.run
        self._url = url  # for the listening connection; holds the password: never shown
        #: The webhook deliveries owed, on the same database.
        self.deliveries = PostgresDeliveryStore(database)

    async def insert(
        self, record: JobRecord, *, replay_since: float | None = None
    ) -> JobRecord | None:
        """Insert a new job; None once inserted. With an idempotency key, the job of the
        same owner and key made since `replay_since` is answered instead (and nothing is
        inserted): several nodes submitting one key at once make one job."""
        row = {name: getattr(record, name) for name in _COLUMNS} | {"now": record.created_at}
        owes = record.callback_url is not None and record.status in ("completed", "failed")
        insert = _ending(_INSERT) if owes else _INSERT  # reused at submit: its webhook is due
        key = record.idempotency_key

        def query(c: Connection) -> JobRecord | None:
            if key is None:
                c.execute(insert, row)
                return None
            with c.transaction():
                # the key's holders take turns: the second sees the first's job
                c.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                    (IDEMPOTENCY_LOCK, f"{record.owner}\n{key}"),
                )
                earlier = _replayable(c, record.owner, key, replay_since or 0.0)
                if earlier is not None:
                    return earlier
                # an expired use of the key: the key is free again
                c.execute(
                    "UPDATE jobs SET idempotency_key = NULL"  # noqa: S608
                    f" WHERE {_owner_is(record.owner)} AND idempotency_key = %(key)s",
                    {"owner": record.owner, "key": key},
                )
                c.execute(insert, row)
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
        sql = (
            f"{_SELECT} WHERE input_sha256 = %(digest)s AND {_owner_is(owner)}"
            " AND spec = %(spec)s AND status = 'completed'"
            " ORDER BY finished_at DESC NULLS LAST LIMIT 1"
        )
        params = {"digest": input_sha256, "owner": owner, "spec": spec}
        return await self._run(lambda c: _job(c, sql, params))

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._run(lambda c: _job(c, f"{_SELECT} WHERE id = %s", (job_id,)))

    async def delete(self, job_id: str) -> bool:
        """Remove a job, and the webhook it owes if any."""
        cursor = await self._run(
            lambda c: c.execute(
                "WITH gone AS (DELETE FROM deliveries WHERE job_id = %(id)s)"
                " DELETE FROM jobs WHERE id = %(id)s",
                {"id": job_id},
            )
        )
        return cursor.rowcount == 1

    async def claim(self, job_id: str, *, owner: str, lease_s: float) -> JobRecord | None:
        """Move a pending job to processing for `owner`; None if someone else has it."""
        sql = f"{_CLAIM} WHERE id = %(id)s AND status = 'pending'{_RETURNING}"
        params = {"id": job_id, "owner": owner, "lease_s": lease_s, "now": time.time()}
        return await self._run(lambda c: _job(c, sql, params))

    async def claim_next(self, *, owner: str, lease_s: float) -> JobRecord | None:
        """Claim the next pending job, fairly across API keys (the key with the fewest
        jobs processing first, then the oldest job); None when none is pending."""
        params = {"owner": owner, "lease_s": lease_s, "now": time.time()}
        return await self._run(lambda c: _job(c, _CLAIM_NEXT, params))

    async def renew(self, *, owner: str, lease_s: float) -> int:
        """Extend the lease of every job `owner` holds; how many it holds."""
        cursor = await self._run(
            lambda c: c.execute(
                f"UPDATE jobs SET lease_expires_at = {DB_NOW} + %s"  # noqa: S608
                " WHERE status = 'processing' AND claimed_by = %s",
                (lease_s, owner),
            )
        )
        return cursor.rowcount

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
        sql = _ending(
            "UPDATE jobs SET status = 'completed', result_width = %(width)s,"
            " result_height = %(height)s, result_bytes = %(size)s, results = %(results)s,"
            " finished_at = %(now)s, updated_at = %(now)s, lease_expires_at = NULL"
            " WHERE id = %(id)s AND status = 'processing' AND claimed_by = %(owner)s"
        )
        params = {
            "width": width,
            "height": height,
            "size": size_bytes,
            "results": results,
            "now": time.time(),
            "id": job_id,
            "owner": owner,
        }
        return len(await self._run(lambda c: c.execute(sql, params).fetchall())) == 1

    async def fail(self, job_id: str, *, code: str, message: str, owner: str | None = None) -> bool:
        """Mark a job failed; with `owner`, only if that owner still holds the claim."""
        sql = (
            "UPDATE jobs SET status = 'failed', error_code = %(code)s,"
            " error_message = %(message)s, finished_at = %(now)s, updated_at = %(now)s,"
            " lease_expires_at = NULL WHERE id = %(id)s"
        )
        if owner is None:
            sql += " AND status IN ('pending', 'processing')"
        else:
            sql += " AND status = 'processing' AND claimed_by = %(owner)s"
        params = {
            "code": code,
            "message": message,
            "now": time.time(),
            "id": job_id,
            "owner": owner,
        }
        return len(await self._run(lambda c: c.execute(_ending(sql), params).fetchall())) == 1

    async def release(self, job_id: str, *, owner: str) -> bool:
        """Give a claimed job back (pending) so that another worker or node runs it."""
        sql = f"{_RELEASE} WHERE id = %(id)s AND status = 'processing' AND claimed_by = %(owner)s"
        params = {"now": time.time(), "id": job_id, "owner": owner}
        return (await self._run(lambda c: c.execute(sql, params))).rowcount == 1

    async def runnable(self, *, limit: int, exclude: Iterable[str]) -> list[tuple[str, str | None]]:
        """Oldest jobs that should be queued (with their owners): pending ones, and
        processing ones whose lease has run out on the database's clock (their node
        died); the latter are put back to pending."""
        skip = set(exclude)

        def query(c: Connection) -> list[tuple[str, str | None]]:
            c.execute(
                f"{_RELEASE} WHERE status = 'processing' AND lease_expires_at < {DB_NOW}",
                {"now": time.time()},
            )
            rows = c.execute(
                "SELECT id, owner FROM jobs WHERE status = 'pending' ORDER BY created_at LIMIT %s",
                (limit + len(skip),),
            ).fetchall()
            return [(job_id, owner) for job_id, owner in rows if job_id not in skip][:limit]

        return await self._run(query)

    async def owners(self) -> list[str]:
        """Every worker that holds a claim on a processing job."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT DISTINCT claimed_by FROM jobs"
                " WHERE status = 'processing' AND claimed_by IS NOT NULL"
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def release_owner(self, owner: str) -> int:
        """Put every job claimed by `owner` (a dead process) back to pending."""
        sql = f"{_RELEASE} WHERE status = 'processing' AND claimed_by = %(owner)s"
        params = {"now": time.time(), "owner": owner}
        return (await self._run(lambda c: c.execute(sql, params))).rowcount

    async def fail_exhausted(self, *, max_attempts: int, message: str) -> list[str]:
        """Fail pending jobs that were already started `max_attempts` times."""
        sql = _ending(
            "UPDATE jobs SET status = 'failed', error_code = 'interrupted',"
            " error_message = %(message)s, finished_at = %(now)s, updated_at = %(now)s"
            " WHERE status = 'pending' AND attempts >= %(max)s"
        )
        params = {"message": message, "now": time.time(), "max": max_attempts}
        rows = await self._run(lambda c: c.execute(sql, params).fetchall())
        return [row[0] for row in rows]

    async def count(self, status: JobStatus | None = None) -> int:
        """How many jobs there are (in `status`, if given)."""
        if status is None:
            row = await self._run(lambda c: c.execute("SELECT count(*) FROM jobs").fetchone())
        else:
            row = await self._run(
                lambda c: c.execute(
                    "SELECT count(*) FROM jobs WHERE status = %s", (status,)
                ).fetchone()
            )
        assert row is not None
        return int(row[0])

    async def pending_by_owner(self) -> dict[str | None, int]:
        """How many jobs are pending, by API key (None: no key)."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT owner, count(*) FROM jobs WHERE status = 'pending' GROUP BY owner"
            ).fetchall()
        )
        return {owner: int(number) for owner, number in rows}

    async def expired(self, *, finished_before: float, limit: int) -> list[JobRecord]:
        """Finished jobs (completed or failed) that ended before `finished_before`, but not
        those still owing a webhook (the receiver may be down for a day)."""
        sql = (
            f"{_SELECT} WHERE status IN ('completed', 'failed') AND finished_at < %s"  # noqa: S608
            " AND NOT EXISTS (SELECT 1 FROM deliveries"
            " WHERE deliveries.job_id = jobs.id AND deliveries.status = 'pending')"
            " ORDER BY finished_at LIMIT %s"
        )
        return await self._run(lambda c: _jobs(c, sql, (finished_before, limit)))

    async def existing(self, ids: Iterable[str]) -> set[str]:
        """Which of `ids` have a row."""
        wanted = list(ids)
        if not wanted:
            return set()
        rows = await self._run(
            lambda c: c.execute("SELECT id FROM jobs WHERE id = ANY(%s)", (wanted,)).fetchall()
        )
        return {row[0] for row in rows}

    async def integrity_check(self) -> str:
        """ "ok" once the database answers (it checks its own pages)."""
        await self._run(lambda c: c.execute("SELECT 1").fetchone())
        return "ok"

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
        where = "(created_at, id) < (%(created)s, %(id)s)"
        params: dict[str, Any] = {"created": created, "id": job_id, "limit": limit}
        if status is not None:
            where += " AND status = %(status)s"
            params["status"] = status
        if owner is not None:
            where += " AND owner = %(owner)s"
            params["owner"] = owner
        sql = f"{_SELECT} WHERE {where} ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
        return await self._run(lambda c: _jobs(c, sql, params))

    async def serve_notifications(
        self,
        on_notify: Callable[[str, str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call `on_notify(channel, job_id)` for every notification of any node, as
        `app.postgres.serve_notifications` does, until cancelled."""
        await serve_notifications(self._url, on_notify, task_status=task_status)


class PostgresDeliveryStore:
    """`DeliveryStore` on the job database; leases on the database's clock."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._run = database.run

    async def claim_due(self, *, owner: str, lease_s: float, limit: int) -> list[DeliveryRecord]:
        """Up to `limit` pending deliveries whose time has come and that nobody holds (or
        whose holder's lease ran out), now held by `owner` for `lease_s`."""
        # Chosen and locked once (a subquery under IN may run again for every row updated,
        # picking more rows than `limit`); a row another claimer holds is skipped.
        sql = (
            "WITH due AS MATERIALIZED (SELECT job_id FROM deliveries"  # noqa: S608
            " WHERE status = 'pending' AND next_attempt_at <= %(now)s"
            f" AND (claimed_by IS NULL OR lease_expires_at < {DB_NOW})"
            " ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            " UPDATE deliveries SET claimed_by = %(owner)s,"
            f" lease_expires_at = {DB_NOW} + %(lease_s)s, updated_at = %(now)s"
            f" FROM due WHERE deliveries.job_id = due.job_id{_DELIVERY_RETURNING}"
        )
        params = {"owner": owner, "lease_s": lease_s, "now": time.time(), "limit": limit}
        return await self._run(lambda c: _deliveries(c, sql, params))

    async def next_due(self) -> float | None:
        """When the next pending delivery is due (or its holder's lease runs out)."""
        row = await self._run(
            lambda c: c.execute(
                "SELECT min(greatest(next_attempt_at, coalesce(lease_expires_at, 0)))"
                " FROM deliveries WHERE status = 'pending' AND next_attempt_at IS NOT NULL"
            ).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def set_payload(self, job_id: str, *, owner: str, payload: bytes) -> bool:
        """Fix the body every attempt of this delivery sends."""
        cursor = await self._run(
            lambda c: c.execute(
                "UPDATE deliveries SET payload = %s WHERE job_id = %s AND claimed_by = %s"
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
        now = time.time()
        status = (
            "delivered" if delivered else "pending" if next_attempt_at is not None else "failed"
        )
        params = (
            status,
            last_status,
            next_attempt_at if status == "pending" else None,
            now if delivered else None,
            now,
            job_id,
            owner,
        )
        cursor = await self._run(
            lambda c: c.execute(
                "UPDATE deliveries SET status = %s, attempts = attempts + 1, last_status = %s,"
                " next_attempt_at = %s, delivered_at = %s, claimed_by = NULL,"
                " lease_expires_at = NULL, updated_at = %s"
                " WHERE job_id = %s AND claimed_by = %s AND status = 'pending'",
                params,
            )
        )
        return cursor.rowcount == 1

    async def of(self, job_ids: Iterable[str]) -> dict[str, DeliveryRecord]:
        """The deliveries of these jobs (those that have one), by job id."""
        wanted = list(job_ids)
        if not wanted:
            return {}
        sql = f"SELECT {', '.join(_DELIVERY_COLUMNS)} FROM deliveries WHERE job_id = ANY(%s)"  # noqa: S608
        found = await self._run(lambda c: _deliveries(c, sql, (wanted,)))
        return {delivery.job_id: delivery for delivery in found}

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
                " WHERE status = 'pending' AND claimed_by = %s",
                (owner,),
            )
        )
        return cursor.rowcount


def _job(c: Connection, sql: str, params: Any) -> JobRecord | None:
    return c.cursor(row_factory=class_row(JobRecord)).execute(sql, params).fetchone()


def _jobs(c: Connection, sql: str, params: Any) -> list[JobRecord]:
    return c.cursor(row_factory=class_row(JobRecord)).execute(sql, params).fetchall()


def _deliveries(c: Connection, sql: str, params: Any) -> list[DeliveryRecord]:
    return c.cursor(row_factory=class_row(DeliveryRecord)).execute(sql, params).fetchall()


def _replayable(c: Connection, owner: str | None, key: str, since: float) -> JobRecord | None:
    sql = (
        f"{_SELECT} WHERE {_owner_is(owner)} AND idempotency_key = %(key)s"
        " AND created_at >= %(since)s"
    )
    return _job(c, sql, {"owner": owner, "key": key, "since": since})


@asynccontextmanager
async def open_postgres_store(url: str) -> AsyncIterator[PostgresJobStore]:
    """Connect to the database of `url` (DATABASE_URL), migrating it if needed; closed
    when the block exits. `DatabaseUnavailable` if it cannot be reached."""
    async with open_postgres_database(url) as database:
        yield PostgresJobStore(database, url)

"""The SQLite job store on real files: claims, leases, recovery, concurrency."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgspec
import trio

from app.sqlite import MIGRATIONS, SqliteThread, connect, connect_reader
from app.store import JobRecord, SqliteJobStore, open_job_store
from tests.fakes import record


async def test_rows_round_trip_and_the_database_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "jobs.db"
    async with open_job_store(path) as store:
        row = record("a")
        await store.insert(row)
        assert await store.get("a") == row
        assert await store.get("missing") is None
        assert await store.integrity_check() == "ok"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_job_is_claimed_once_even_by_two_processes_sharing_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    async with open_job_store(path) as one, open_job_store(path) as two:
        for number in range(50):
            await one.insert(record(f"job-{number}"))
        claims: dict[str, list[str]] = {}

        async def claim_all(store: object, owner: str) -> None:
            for number in range(50):
                got = await store.claim(f"job-{number}", owner=owner, lease_s=60)  # type: ignore[attr-defined]
                if got is not None:
                    claims.setdefault(got.id, []).append(owner)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim_all, one, "one")
            nursery.start_soon(claim_all, two, "two")
    assert len(claims) == 50
    assert all(len(owners) == 1 for owners in claims.values())


async def test_only_the_claim_holder_completes_fails_or_releases(tmp_path: Path) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        await store.insert(record("a"))
        claimed = await store.claim("a", owner="me", lease_s=60)
        assert claimed is not None
        assert claimed.status == "processing"
        assert claimed.attempts == 1
        assert await store.claim("a", owner="other", lease_s=60) is None
        assert not await store.complete("a", owner="other", width=1, height=1, size_bytes=1)
        assert not await store.release("a", owner="other")
        assert await store.complete("a", owner="me", width=3, height=4, size_bytes=5)
        done = await store.get("a")
        assert done is not None
        assert (done.status, done.result_width, done.result_height, done.result_bytes) == (
            "completed",
            3,
            4,
            5,
        )
        # Terminal rows never change again.
        assert not await store.fail("a", code="x", message="y")
        assert await store.claim("a", owner="me", lease_s=60) is None


async def test_runnable_takes_back_expired_claims_and_skips_excluded(tmp_path: Path) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        for name, created in (("old", 1.0), ("new", 2.0), ("queued", 0.5)):
            await store.insert(record(name, created_at=created))
        await store.insert(record("expired", created_at=0.1))
        await store.claim("expired", owner="dead", lease_s=-1)
        await store.insert(record("leased", created_at=0.2))
        await store.claim("leased", owner="alive", lease_s=60)
        ids = await store.runnable(limit=10, exclude={"queued"})
        assert ids == [("expired", None), ("old", None), ("new", None)]
        assert await store.runnable(limit=1, exclude=set()) == [("expired", None)]
        assert await store.owners() == ["alive"]
        assert await store.release_owner("alive") == 1
        assert (await store.get("leased")).status == "pending"  # type: ignore[union-attr]


async def test_jobs_interrupted_too_often_fail_with_a_reason(tmp_path: Path) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        await store.insert(record("tired", attempts=3))
        await store.insert(record("fresh", attempts=1))
        assert await store.fail_exhausted(max_attempts=3, message="interrupted 3 times") == [
            "tired"
        ]
        tired = await store.get("tired")
        assert tired is not None
        assert (tired.status, tired.error_code) == ("failed", "interrupted")
        assert await store.count("pending") == 1


async def test_a_cancelled_caller_still_sees_its_write_land(tmp_path: Path) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.insert(record("a"))
        assert await store.get("a") is not None


async def test_timestamps_move_forward(tmp_path: Path) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        before = time.time()
        await store.insert(record("a", created_at=before, updated_at=before))
        await store.claim("a", owner="me", lease_s=60)
        row = await store.get("a")
        assert row is not None
        assert row.updated_at >= before
        assert row.started_at is not None
        assert row.lease_expires_at is not None
        assert row.lease_expires_at > row.started_at + 59


async def test_a_row_read_on_the_event_loop_sees_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_job_store(path) as store:
        await store.insert(record("a"))
        first = await store.get("a")
        assert first is not None
        assert first.status == "pending"
        assert await store.claim("a", owner="me", lease_s=60) is not None
        second = await store.get("a")
        assert second is not None
        assert second.status == "processing"


async def test_a_row_read_the_reader_cannot_make_goes_through_the_store_thread(
    tmp_path: Path,
) -> None:
    # Any OperationalError of the reader (busy, locked) falls back to the store's thread:
    # here a reader on an empty file, which has no jobs table.
    sqlite3.connect(tmp_path / "empty.db").close()
    thread = SqliteThread(connect(tmp_path / "jobs.db"))
    store = SqliteJobStore(thread, connect_reader(tmp_path / "empty.db"))
    try:
        row = record("a")
        await store.insert(row)
        assert await store.get("a") == row
    finally:
        thread.close()


# The schema of the first release (version 0), as it created the table.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, operation TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, output_format TEXT NOT NULL,
    input_key TEXT NOT NULL, output_key TEXT NOT NULL, input_bytes INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, claimed_by TEXT, lease_expires_at REAL,
    error_code TEXT, error_message TEXT, result_width INTEGER, result_height INTEGER,
    result_bytes INTEGER, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL, finished_at REAL
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);
INSERT INTO jobs (id, status, operation, width, height, output_format, input_key, output_key,
    input_bytes, created_at, updated_at)
VALUES ('old', 'pending', 'thumbnail', 64, 48, 'png', 'uploads/old.png', 'outputs/old.png',
    10, 1.0, 1.0);
"""


async def test_a_database_of_the_first_release_is_migrated_and_its_jobs_keep_working(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(FIRST_RELEASE_SCHEMA)
    async with open_job_store(path) as store:
        old = await store.get("old")
        assert old is not None
        assert (old.operation, old.width, old.height, old.spec) == ("thumbnail", 64, 48, None)
        assert await store.claim("old", owner="me", lease_s=60) is not None
        assert await store.complete("old", owner="me", width=64, height=43, size_bytes=5)
        await store.insert(msgspec.structs.replace(record("new"), spec=b'{"steps":[]}'))
        new = await store.get("new")
        assert new is not None
        assert new.spec == b'{"steps":[]}'
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_opening_a_current_database_again_migrates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    for _ in range(2):
        async with open_job_store(path) as store:
            await store.count()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        assert columns.count("spec") == 1


async def test_the_owners_of_runnable_jobs_come_with_them(tmp_path: Path) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        await store.insert(record("a", owner="alice", created_at=1.0))
        await store.insert(record("b", created_at=2.0))
        assert await store.runnable(limit=5, exclude=()) == [("a", "alice"), ("b", None)]


async def test_an_idempotency_key_makes_one_job_per_owner_within_its_window(
    tmp_path: Path,
) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        first = record("first", owner="alice", idempotency_key="k1", created_at=100.0)
        assert await store.insert(first, replay_since=50.0) is None
        # the same key, same owner: the first job is answered, nothing inserted
        again = record("again", owner="alice", idempotency_key="k1", created_at=101.0)
        assert await store.insert(again, replay_since=50.0) == first
        assert await store.get("again") is None
        # another owner's key of the same name is another key
        bobs = record("bobs", owner="bob", idempotency_key="k1", created_at=102.0)
        assert await store.insert(bobs, replay_since=50.0) is None
        found = await store.replayable(owner="alice", idempotency_key="k1", since=50.0)
        assert found == first
        # once the window is over, the key is free again and names the new job
        later = record("later", owner="alice", idempotency_key="k1", created_at=300.0)
        assert await store.insert(later, replay_since=200.0) is None
        found = await store.replayable(owner="alice", idempotency_key="k1", since=0.0)
        assert found is not None
        assert found.id == "later"
        assert (await store.get("first")) is not None  # the job itself stays


async def test_two_processes_inserting_one_key_at_once_make_one_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    answers: list[JobRecord | None] = []
    async with open_job_store(path) as one, open_job_store(path) as two:

        async def insert(store: SqliteJobStore, job_id: str) -> None:
            row = record(job_id, owner="alice", idempotency_key="same", created_at=10.0)
            answers.append(await store.insert(row, replay_since=0.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(insert, one, "x")
            nursery.start_soon(insert, two, "y")
        assert answers.count(None) == 1
        assert await one.count() == 1


async def test_a_completed_job_of_the_same_owner_upload_and_spec_is_reusable(
    tmp_path: Path,
) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        same = {"input_sha256": b"d" * 32, "spec": b'{"steps":[]}'}
        await store.insert(record("done", owner="alice", **same))
        await store.claim("done", owner="me", lease_s=60)
        await store.complete("done", owner="me", width=1, height=1, size_bytes=1)
        await store.insert(record("waiting", owner="alice", **same))
        found = await store.reusable(owner="alice", **same)
        assert found is not None
        assert found.id == "done"
        assert await store.reusable(owner="bob", **same) is None
        assert (
            await store.reusable(owner="alice", input_sha256=b"e" * 32, spec=same["spec"]) is None
        )
        assert (
            await store.reusable(owner="alice", input_sha256=same["input_sha256"], spec=b"{}")
            is None
        )


async def test_a_job_with_a_callback_owes_its_delivery_from_the_moment_it_ends(
    tmp_path: Path,
) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        hook = "https://hooks.example.com/imgjobs"
        for job_id in ("ok", "bad", "quiet"):
            url = None if job_id == "quiet" else hook
            await store.insert(record(job_id, callback_url=url))
            await store.claim(job_id, owner="me", lease_s=60)
        assert await store.deliveries.of(["ok", "bad", "quiet"]) == {}  # nothing ended yet
        await store.complete("ok", owner="me", width=1, height=1, size_bytes=1)
        await store.fail("bad", code="timeout", message="too slow", owner="me")
        await store.complete("quiet", owner="me", width=1, height=1, size_bytes=1)
        owed = await store.deliveries.of(["ok", "bad", "quiet"])
        assert sorted(owed) == ["bad", "ok"]
        assert owed["ok"].event == "job.completed"
        assert owed["bad"].event == "job.failed"
        assert owed["ok"].webhook_id == "msg_" + "ok"  # the job id without dashes
        assert (owed["ok"].status, owed["ok"].attempts, owed["ok"].url) == ("pending", 0, hook)
        due = await store.deliveries.claim_due(owner="me", lease_s=30, limit=10)
        assert sorted(d.job_id for d in due) == ["bad", "ok"]
        assert await store.deliveries.claim_due(owner="other", lease_s=30, limit=10) == []
        # a job still owing its webhook is not expired; deleting the job drops the delivery
        assert [r.id for r in await store.expired(finished_before=1e12, limit=10)] == ["quiet"]
        assert await store.delete("ok")
        assert sorted(await store.deliveries.of(["ok", "bad"])) == ["bad"]


async def test_listing_by_owner_shows_only_that_owners_jobs(tmp_path: Path) -> None:
    async with open_job_store(tmp_path / "jobs.db") as store:
        await store.insert(record("a", owner="alice", created_at=1.0))
        await store.insert(record("b", owner="bob", created_at=2.0))
        await store.insert(record("c", created_at=3.0))
        assert [r.id for r in await store.page(limit=10, owner="alice")] == ["a"]
        assert [r.id for r in await store.page(limit=10)] == ["c", "b", "a"]


async def test_a_database_of_the_last_release_opens_and_its_jobs_keep_working(
    tmp_path: Path,
) -> None:
    """Schema 3 (steps, variants, the listing index), as the last release left it."""
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(FIRST_RELEASE_SCHEMA)
        for statements in MIGRATIONS[:3]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("UPDATE jobs SET spec = ? WHERE id = 'old'", (b'{"steps":[]}',))
    async with open_job_store(path) as store:
        old = await store.get("old")
        assert old is not None
        assert (old.spec, old.owner, old.callback_url, old.reused) == (
            b'{"steps":[]}',
            None,
            None,
            False,
        )
        assert [r.id for r in await store.page(limit=5)] == ["old"]
        assert await store.claim("old", owner="me", lease_s=60) is not None
        assert await store.complete("old", owner="me", width=1, height=1, size_bytes=1)
        assert await store.deliveries.of(["old"]) == {}  # no callback, nothing owed
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)

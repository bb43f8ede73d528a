"""The PostgreSQL job and delivery stores on a real server: the SQLite store's behaviour,
claims of the next job by concurrent claimers and fairly across keys, leases on the
database's clock, migrations by several nodes at once, notifications."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
import trio

from app.postgres import CHANGED, CLAIMABLE, MIGRATIONS, DatabaseUnavailable, _listening
from app.postgres_store import PostgresJobStore, open_postgres_store
from app.store import JobRecord, SharedJobStore
from tests.fakes import record
from tests.pg_server import free_port, postgres_server, postgres_url  # noqa: F401

TIMEOUT_S = 5.0
HOOK = "https://hooks.example.com/imgjobs"


def shared(store: PostgresJobStore) -> SharedJobStore:
    """The store as the service sees it (mypy checks here that it is one)."""
    return store


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresJobStore]:  # noqa: F811
    async with open_postgres_store(postgres_url) as store:
        assert shared(store) is store
        yield store


async def claimed(store: PostgresJobStore, job_id: str, owner: str = "me") -> JobRecord:
    got = await store.claim(job_id, owner=owner, lease_s=60)
    assert got is not None
    return got


async def test_every_field_round_trips(store: PostgresJobStore) -> None:
    full = record(
        "full",
        status="failed",
        operation="steps",
        attempts=2,
        claimed_by="host/1/abc",
        lease_expires_at=1.5,
        error_code="timeout",
        error_message="too slow",
        result_width=3,
        result_height=4,
        result_bytes=5_000_000_000,
        started_at=2.25,
        finished_at=3.125,
        spec=b'{"steps":[]}',
        results=b"\x00\xff\x00",
        owner="alice",
        idempotency_key="k",
        request_sha256=b"r" * 32,
        input_sha256=b"i" * 32,
        callback_url=HOOK,
        metadata=b'{"a":1}',
        reused=True,
    )
    bare = record("bare")
    await store.insert(full)
    await store.insert(bare)
    got = await store.get("full")
    assert got == full
    assert got is not None
    assert all(isinstance(value, bytes) for value in (got.spec, got.results, got.metadata))
    got = await store.get("bare")
    assert got == bare
    assert got is not None
    assert (got.spec, got.owner, got.reused) == (None, None, False)
    assert await store.get("missing") is None
    assert await store.integrity_check() == "ok"


async def test_pages_are_newest_first_and_filtered(store: PostgresJobStore) -> None:
    for job_id, created, owner in (
        ("a", 1.0, "alice"),
        ("b", 2.0, "bob"),
        ("c", 3.0, None),
        ("d", 3.0, "alice"),  # same time as c: the id decides
        ("e", 4.0, "alice"),
    ):
        await store.insert(record(job_id, created_at=created, owner=owner))
    await claimed(store, "d")
    assert [r.id for r in await store.page(limit=10)] == ["e", "d", "c", "b", "a"]
    assert [r.id for r in await store.page(limit=2)] == ["e", "d"]
    assert [r.id for r in await store.page(limit=10, before=(3.0, "d"))] == ["c", "b", "a"]
    assert [r.id for r in await store.page(limit=10, owner="alice")] == ["e", "d", "a"]
    assert [r.id for r in await store.page(limit=10, status="processing")] == ["d"]
    assert [
        r.id for r in await store.page(limit=10, status="pending", owner="alice", before=(4, "e"))
    ] == ["a"]


async def test_only_the_claim_holder_completes_fails_or_releases(store: PostgresJobStore) -> None:
    await store.insert(record("a"))
    before = time.time()
    got = await claimed(store, "a")
    assert (got.status, got.attempts, got.claimed_by) == ("processing", 1, "me")
    assert got.lease_expires_at is not None
    assert before + 59 < got.lease_expires_at < time.time() + 61  # the database's clock
    assert await store.claim("a", owner="other", lease_s=60) is None
    assert not await store.complete("a", owner="other", width=1, height=1, size_bytes=1)
    assert not await store.fail("a", code="x", message="y", owner="other")
    assert not await store.release("a", owner="other")
    assert await store.complete("a", owner="me", width=3, height=4, size_bytes=5, results=b"[]")
    done = await store.get("a")
    assert done is not None
    assert (done.status, done.result_width, done.result_height, done.result_bytes) == (
        "completed",
        3,
        4,
        5,
    )
    assert (done.results, done.lease_expires_at) == (b"[]", None)
    assert done.finished_at is not None
    # Terminal rows never change again.
    assert not await store.fail("a", code="x", message="y")
    assert await store.claim("a", owner="me", lease_s=60) is None
    assert not await store.release("a", owner="me")


async def test_a_released_job_is_pending_and_claimable_again(store: PostgresJobStore) -> None:
    await store.insert(record("a"))
    await claimed(store, "a")
    assert await store.release("a", owner="me")
    back = await store.get("a")
    assert back is not None
    assert (back.status, back.claimed_by, back.lease_expires_at) == ("pending", None, None)
    assert (await claimed(store, "a", owner="next")).attempts == 2


async def test_ending_a_job_with_a_callback_owes_its_delivery(store: PostgresJobStore) -> None:
    for job_id in ("ok", "bad", "quiet", "early"):
        await store.insert(record(job_id, callback_url=None if job_id == "quiet" else HOOK))
    for job_id in ("ok", "bad", "quiet"):
        await claimed(store, job_id)
    assert await store.deliveries.of(["ok", "bad", "quiet", "early"]) == {}  # none ended yet
    assert await store.complete("ok", owner="me", width=1, height=1, size_bytes=1)
    assert await store.fail("bad", code="timeout", message="too slow", owner="me")
    assert await store.complete("quiet", owner="me", width=1, height=1, size_bytes=1)
    assert await store.fail("early", code="cancelled", message="gone")  # pending, no owner
    owed = await store.deliveries.of(["ok", "bad", "quiet", "early"])
    assert sorted(owed) == ["bad", "early", "ok"]
    assert (owed["ok"].event, owed["bad"].event) == ("job.completed", "job.failed")
    assert (owed["ok"].webhook_id, owed["ok"].url) == ("msg_ok", HOOK)
    assert (owed["ok"].status, owed["ok"].attempts) == ("pending", 0)
    assert owed["ok"].next_attempt_at == owed["ok"].created_at


async def test_a_job_reused_at_submit_owes_its_delivery_at_once(store: PostgresJobStore) -> None:
    job_id = "1234-5678"
    await store.insert(record(job_id, status="completed", callback_url=HOOK, reused=True))
    owed = await store.deliveries.of([job_id])
    assert owed[job_id].webhook_id == "msg_12345678"  # the job id without dashes
    assert owed[job_id].event == "job.completed"


async def test_runnable_takes_back_expired_leases_and_skips_excluded(
    store: PostgresJobStore,
) -> None:
    for name, created in (("old", 1.0), ("new", 2.0), ("queued", 0.5)):
        await store.insert(record(name, created_at=created))
    await store.insert(record("expired", created_at=0.1, owner="alice"))
    await store.claim("expired", owner="dead", lease_s=-1)
    await store.insert(record("leased", created_at=0.2))
    await store.claim("leased", owner="alive", lease_s=60)
    assert await store.runnable(limit=10, exclude={"queued"}) == [
        ("expired", "alice"),
        ("old", None),
        ("new", None),
    ]
    assert await store.runnable(limit=1, exclude=set()) == [("expired", "alice")]
    assert await store.owners() == ["alive"]
    assert await store.release_owner("alive") == 1
    leased = await store.get("leased")
    assert leased is not None
    assert leased.status == "pending"
    # The expired job was put back: another worker claims it, for its second attempt.
    again = await store.claim_next(owner="next", lease_s=60)
    assert again is not None
    assert (again.id, again.attempts) == ("expired", 2)


async def test_jobs_interrupted_too_often_fail_with_a_reason(store: PostgresJobStore) -> None:
    await store.insert(record("tired", attempts=3, callback_url=HOOK))
    await store.insert(record("fresh", attempts=1))
    assert await store.fail_exhausted(max_attempts=3, message="interrupted 3 times") == ["tired"]
    tired = await store.get("tired")
    assert tired is not None
    assert (tired.status, tired.error_code, tired.error_message) == (
        "failed",
        "interrupted",
        "interrupted 3 times",
    )
    assert await store.count("pending") == 1
    assert await store.count() == 2
    assert (await store.deliveries.of(["tired"]))["tired"].event == "job.failed"


async def test_an_idempotency_key_makes_one_job_per_owner_within_its_window(
    store: PostgresJobStore,
) -> None:
    first = record("first", owner="alice", idempotency_key="k1", created_at=100.0)
    assert await store.insert(first, replay_since=50.0) is None
    again = record("again", owner="alice", idempotency_key="k1", created_at=101.0)
    assert await store.insert(again, replay_since=50.0) == first
    assert await store.get("again") is None
    # another owner's key of the same name is another key; no key at all is one more
    for job_id, owner in (("bobs", "bob"), ("anon", None)):
        row = record(job_id, owner=owner, idempotency_key="k1", created_at=102.0)
        assert await store.insert(row, replay_since=50.0) is None
    anon_again = record("anon2", idempotency_key="k1", created_at=103.0)
    assert (await store.insert(anon_again, replay_since=50.0)) == await store.get("anon")
    assert await store.replayable(owner="alice", idempotency_key="k1", since=50.0) == first
    assert await store.replayable(owner="alice", idempotency_key="k1", since=100.5) is None
    # once the window is over, the key is free again and names the new job
    later = record("later", owner="alice", idempotency_key="k1", created_at=300.0)
    assert await store.insert(later, replay_since=200.0) is None
    found = await store.replayable(owner="alice", idempotency_key="k1", since=0.0)
    assert found is not None
    assert found.id == "later"
    assert await store.get("first") is not None  # the job itself stays


async def test_concurrent_submits_with_one_key_make_one_job(store: PostgresJobStore) -> None:
    async def submit(job_id: str, key: str, answers: dict[str, JobRecord | None]) -> None:
        row = record(job_id, owner="alice", idempotency_key=key, created_at=10.0)
        answers[job_id] = await store.insert(row, replay_since=0.0)

    for key in range(10):  # races are won by luck: give them many chances
        answers: dict[str, JobRecord | None] = {}
        async with trio.open_nursery() as nursery:
            for number in range(8):
                nursery.start_soon(submit, f"job-{key}-{number}", f"key-{key}", answers)
        [made] = [job_id for job_id, answer in answers.items() if answer is None]
        winner = await store.get(made)
        assert all(answer == winner for answer in answers.values() if answer is not None)
    assert await store.count() == 10


async def test_a_completed_job_of_the_same_owner_upload_and_spec_is_reusable(
    store: PostgresJobStore,
) -> None:
    digest, spec = b"d" * 32, b'{"steps":[]}'
    for job_id in ("older", "newer"):
        await store.insert(record(job_id, owner="alice", input_sha256=digest, spec=spec))
        await claimed(store, job_id)
        await store.complete(job_id, owner="me", width=1, height=1, size_bytes=1)
    await store.insert(record("waiting", owner="alice", input_sha256=digest, spec=spec))
    await store.insert(record("anon", input_sha256=digest, spec=spec, status="completed"))
    found = await store.reusable(owner="alice", input_sha256=digest, spec=spec)
    assert found is not None
    assert found.id == "newer"
    anon = await store.reusable(owner=None, input_sha256=digest, spec=spec)
    assert anon is not None
    assert anon.id == "anon"
    assert await store.reusable(owner="bob", input_sha256=digest, spec=spec) is None
    assert await store.reusable(owner="alice", input_sha256=b"e" * 32, spec=spec) is None
    assert await store.reusable(owner="alice", input_sha256=digest, spec=b"{}") is None


async def test_expired_jobs_leave_out_those_still_owing_a_webhook(
    store: PostgresJobStore,
) -> None:
    for job_id, finished, hook in (("b", 2.0, None), ("a", 1.0, None), ("owes", 0.5, HOOK)):
        row = record(job_id, status="completed", finished_at=finished, callback_url=hook)
        await store.insert(row)
    await store.insert(record("late", status="failed", finished_at=50.0))
    await store.insert(record("running"))
    assert [r.id for r in await store.expired(finished_before=10.0, limit=10)] == ["a", "b"]
    assert [r.id for r in await store.expired(finished_before=10.0, limit=1)] == ["a"]
    [owed] = await store.deliveries.claim_due(owner="me", lease_s=60, limit=10)
    assert owed.job_id == "owes"
    assert await store.deliveries.record(
        "owes", owner="me", delivered=True, last_status="200", next_attempt_at=None
    )
    assert [r.id for r in await store.expired(finished_before=10.0, limit=10)] == [
        "owes",
        "a",
        "b",
    ]


async def test_existing_and_delete(store: PostgresJobStore) -> None:
    await store.insert(record("kept"))
    await store.insert(record("owes", status="failed", callback_url=HOOK))
    assert await store.existing(["kept", "owes", "gone"]) == {"kept", "owes"}
    assert await store.existing([]) == set()
    assert await store.delete("owes")
    assert not await store.delete("owes")
    assert await store.deliveries.of(["owes"]) == {}  # the delivery went with its job
    assert await store.existing(["kept", "owes"]) == {"kept"}


async def test_concurrent_claimers_on_two_nodes_claim_each_job_once(
    postgres_url: str,  # noqa: F811
) -> None:
    claims: list[tuple[str, str]] = []
    async with open_postgres_store(postgres_url) as one, open_postgres_store(postgres_url) as two:
        for number in range(60):
            owner = (None, "alice", "bob")[number % 3]
            await one.insert(record(f"job-{number}", owner=owner, created_at=float(number)))

        async def drain(store: PostgresJobStore, worker: str) -> None:
            while (got := await store.claim_next(owner=worker, lease_s=60)) is not None:
                assert got.claimed_by == worker
                claims.append((got.id, worker))

        async with trio.open_nursery() as nursery:
            for number in range(4):
                nursery.start_soon(drain, one, f"one-{number}")
                nursery.start_soon(drain, two, f"two-{number}")
        assert await one.count("processing") == 60
    ids = [job_id for job_id, _ in claims]
    assert sorted(ids) == sorted(f"job-{number}" for number in range(60))
    assert len({worker for _, worker in claims}) > 1  # they really did run side by side


async def test_the_key_with_the_fewest_jobs_processing_goes_first(
    store: PostgresJobStore,
) -> None:
    for number in range(20):
        await store.insert(record(f"a-{number}", owner="A", created_at=1.0 + number))
    await store.insert(record("a-busy", owner="A", created_at=0.5))
    await claimed(store, "a-busy")
    await store.insert(record("b", owner="B", created_at=100.0))

    async def next_id() -> str | None:
        got = await store.claim_next(owner="worker", lease_s=60)
        return None if got is None else got.id

    assert await next_id() == "b"  # B has none processing, A one
    # no key at all is a group of its own: none processing, so first though newest
    await store.insert(record("anonymous", created_at=200.0))
    assert await next_id() == "anonymous"
    # every group has one processing: the oldest job
    assert await next_id() == "a-0"
    assert await next_id() == "a-1"


async def test_a_locked_candidate_is_skipped_not_waited_for(
    store: PostgresJobStore,
    postgres_url: str,  # noqa: F811
) -> None:
    for number in range(3):
        await store.insert(record(f"a-{number}", owner="A", created_at=float(number)))
    with psycopg.connect(postgres_url) as other:  # another claimer, mid-transaction
        # (ended by the server after a while: a claim_next that waited for it would fail
        # the test instead of hanging it)
        other.execute("SET idle_in_transaction_session_timeout = '2s'")
        other.execute("SELECT id FROM jobs WHERE id = 'a-0' FOR UPDATE")
        with trio.fail_after(TIMEOUT_S):
            got = await store.claim_next(owner="me", lease_s=60)
        assert got is not None
        assert got.id == "a-1"  # A's oldest is held: the oldest job nobody holds
        other.rollback()
    assert (await store.claim_next(owner="me", lease_s=60)).id == "a-0"  # type: ignore[union-attr]
    assert (await store.claim_next(owner="me", lease_s=60)).id == "a-2"  # type: ignore[union-attr]
    assert await store.claim_next(owner="me", lease_s=60) is None


async def test_renewing_extends_only_that_owners_leases(store: PostgresJobStore) -> None:
    for job_id, owner in (("a", "me"), ("b", "me"), ("c", "other")):
        await store.insert(record(job_id))
        await store.claim(job_id, owner=owner, lease_s=1)
    before = time.time()
    assert await store.renew(owner="me", lease_s=600) == 2
    assert await store.renew(owner="nobody", lease_s=600) == 0
    leases = {}
    for job_id in "abc":
        row = await store.get(job_id)
        assert row is not None
        assert row.lease_expires_at is not None
        leases[job_id] = row.lease_expires_at
    assert leases["a"] > before + 590
    assert leases["b"] > before + 590
    assert leases["c"] < before + 2


async def test_nodes_migrating_one_database_at_once_take_turns(
    postgres_url: str,  # noqa: F811
) -> None:
    opened: list[PostgresJobStore] = []

    async def node(done: trio.Event) -> None:
        async with open_postgres_store(postgres_url) as store:
            opened.append(store)
            await done.wait()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(node, done)
        with trio.fail_after(TIMEOUT_S * 2):
            while len(opened) < 4:
                await trio.sleep(0.01)
        await opened[0].insert(record("a"))
        assert await opened[3].get("a") is not None
        done.set()
    async with open_postgres_store(postgres_url):  # a current schema: nothing to do
        pass
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]


async def test_an_unreachable_database_is_a_clear_error_without_its_password(
    postgres_server: str,  # noqa: F811
) -> None:
    refused = f"postgresql://imgjobs:hunter2-secret@127.0.0.1:{free_port()}/imgjobs"
    missing = postgres_server.replace("postgres@", "postgres:hunter2-secret@").rsplit("/", 1)[0]
    for url in (refused, missing + "/no_such_database"):
        with pytest.raises(DatabaseUnavailable) as raised:
            async with open_postgres_store(url):
                pass
        message = str(raised.value)
        assert "DATABASE_URL" in message
        assert "hunter2" not in message
        assert ":***@127.0.0.1" in message


class Heard:
    """An `on_notify` that remembers what it heard and lets tests wait for it."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str]] = []
        self._news = trio.Event()

    def __call__(self, channel: str, payload: str) -> None:
        self.heard.append((channel, payload))
        self._news.set()
        self._news = trio.Event()

    async def wait_for(self, channel: str, payload: str) -> None:
        with trio.fail_after(TIMEOUT_S):
            while (channel, payload) not in self.heard:
                await self._news.wait()


async def test_claimable_jobs_and_status_changes_are_announced(store: PostgresJobStore) -> None:
    heard = Heard()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve_notifications, heard)
        await store.insert(record("a"))
        await heard.wait_for(CLAIMABLE, "a")
        await claimed(store, "a")
        await heard.wait_for(CHANGED, "a")
        heard.heard.clear()
        await store.release("a", owner="me")
        await heard.wait_for(CLAIMABLE, "a")
        await claimed(store, "a")
        await store.complete("a", owner="me", width=1, height=1, size_bytes=1)
        await heard.wait_for(CHANGED, "a")
        await store.insert(record("done", status="completed"))  # never claimable
        await store.delete("done")
        await heard.wait_for(CHANGED, "done")
        nursery.cancel_scope.cancel()
    assert (CLAIMABLE, "done") not in heard.heard


async def test_a_lost_listening_connection_comes_back_and_says_so(
    store: PostgresJobStore,
    postgres_url: str,  # noqa: F811
) -> None:
    heard = Heard()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve_notifications, heard)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            [(killed,)] = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            ).fetchall()
        assert killed
        await heard.wait_for(CLAIMABLE, "")  # some may have been missed: look for work
        await store.insert(record("after"))
        await heard.wait_for(CLAIMABLE, "after")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("query", "idle_s"), [("", 20), ("?keepalives_idle=7", 7)], ids=["default", "url"]
)
async def test_the_listening_connection_probes_a_silent_network(
    postgres_url: str,  # noqa: F811
    query: str,
    idle_s: int,
) -> None:
    conn = await _listening(postgres_url + query)
    try:
        with socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as sock:
            options = [
                sock.getsockopt(level, option)
                for level, option in [
                    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                ]
            ]
    finally:
        conn.close()
    assert options == [1, idle_s, 5, 4]  # a dropped network fails it within about a minute


async def test_deliveries_are_claimed_recorded_and_released(store: PostgresJobStore) -> None:
    deliveries = store.deliveries
    assert await deliveries.next_due() is None
    await store.insert(record("j", status="completed", callback_url=HOOK, created_at=time.time()))
    due = await deliveries.next_due()
    assert due is not None
    assert due <= time.time()
    [held] = await deliveries.claim_due(owner="me", lease_s=60, limit=10)
    assert (held.job_id, held.claimed_by, held.attempts) == ("j", "me", 0)
    assert held.lease_expires_at is not None
    assert held.lease_expires_at > time.time() + 50
    assert await deliveries.claim_due(owner="other", lease_s=60, limit=10) == []
    assert await deliveries.next_due() == held.lease_expires_at  # due again if I vanish
    assert await deliveries.owners() == ["me"]
    # the body is fixed once, by the holder
    assert not await deliveries.set_payload("j", owner="other", payload=b"x")
    assert await deliveries.set_payload("j", owner="me", payload=b"body")
    assert not await deliveries.set_payload("j", owner="me", payload=b"other body")
    # only the holder records; a retry is due later and the claim ends
    assert not await deliveries.record(
        "j", owner="other", delivered=True, last_status="200", next_attempt_at=None
    )
    retry_at = time.time() + 3600
    assert await deliveries.record(
        "j", owner="me", delivered=False, last_status="503", next_attempt_at=retry_at
    )
    waiting = (await deliveries.of(["j"]))["j"]
    assert (waiting.status, waiting.attempts, waiting.last_status) == ("pending", 1, "503")
    assert (waiting.claimed_by, waiting.payload, waiting.next_attempt_at) == (
        None,
        b"body",
        retry_at,
    )
    assert await deliveries.claim_due(owner="me", lease_s=60, limit=10) == []  # not yet due
    assert await deliveries.next_due() == retry_at
    assert await deliveries.owners() == []


async def test_a_delivery_given_up_or_delivered_is_never_claimed_again(
    store: PostgresJobStore,
) -> None:
    deliveries = store.deliveries
    for job_id in ("given-up", "delivered"):
        await store.insert(record(job_id, status="failed", callback_url=HOOK))
    assert len(await deliveries.claim_due(owner="me", lease_s=60, limit=10)) == 2
    assert await deliveries.record(
        "given-up", owner="me", delivered=False, last_status="410", next_attempt_at=None
    )
    assert await deliveries.record(
        "delivered", owner="me", delivered=True, last_status="204", next_attempt_at=None
    )
    found = await deliveries.of(["given-up", "delivered", "no-such-job"])
    assert (found["given-up"].status, found["given-up"].next_attempt_at) == ("failed", None)
    assert found["delivered"].status == "delivered"
    assert found["delivered"].delivered_at is not None
    assert await deliveries.claim_due(owner="me", lease_s=60, limit=10) == []
    assert await deliveries.next_due() is None


async def test_a_dead_holders_deliveries_come_back(store: PostgresJobStore) -> None:
    deliveries = store.deliveries
    for job_id in ("released", "expired"):
        await store.insert(record(job_id, status="completed", callback_url=HOOK))
    assert len(await deliveries.claim_due(owner="dead", lease_s=60, limit=1)) == 1
    assert len(await deliveries.claim_due(owner="late", lease_s=-1, limit=1)) == 1
    assert sorted(await deliveries.owners()) == ["dead", "late"]
    assert await deliveries.release_owner("dead") == 1
    taken = await deliveries.claim_due(owner="me", lease_s=60, limit=10)
    assert sorted(d.job_id for d in taken) == ["expired", "released"]  # a lease ran out too


async def test_concurrent_delivery_claimers_claim_each_once(store: PostgresJobStore) -> None:
    for number in range(40):
        await store.insert(record(f"j-{number}", status="completed", callback_url=HOOK))
    claims: list[str] = []

    async def claim(worker: str) -> None:
        while taken := await store.deliveries.claim_due(owner=worker, lease_s=60, limit=3):
            claims.extend(d.job_id for d in taken)

    async with trio.open_nursery() as nursery:
        for number in range(6):
            nursery.start_soon(claim, f"w-{number}")
    assert sorted(claims) == sorted(f"j-{number}" for number in range(40))

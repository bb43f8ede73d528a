"""The delivery loop against a real job database and real loopback receivers: delivered once,
retried with the same bytes, given up, taken back from a dead process, never sent twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from standardwebhooks.webhooks import Webhook

from app.deliveries import Deliverer, DelivererStatistics
from app.delivery_store import DeliveryRecord
from app.metrics import Metrics
from app.store import SqliteJobStore, open_job_store
from app.webhooks import Signer
from app.workers import new_owner_id
from tests.fakes import record
from tests.test_webhooks import SECRET, Behaviour, answer, loopback, open_receiver

TIMEOUT_S = 5.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with open_job_store(tmp_path / "jobs.db") as store:
        yield store


async def render(delivery: DeliveryRecord) -> bytes:
    """What the service's `payload_of` does, with a stand-in for the job's view."""
    data = {"id": delivery.job_id, "status": delivery.event.removeprefix("job.")}
    return msgspec.json.encode({"type": delivery.event, "timestamp": "now", "data": data})


def make_deliverer(store: SqliteJobStore, **changes: Any) -> Deliverer:
    options: dict[str, Any] = {
        "signer": Signer(SECRET),
        "payload_of": render,
        "metrics": Metrics(),  # a test that reads them passes its own
        "allow_private": True,
        "resolver": loopback,
        "retry_base_s": 0.05,
        "poll_s": 0.05,
        "attempt_timeout_s": 2.0,
        **changes,
    }
    return Deliverer(store.deliveries, **options)


@asynccontextmanager
async def serving(deliverer: Deliverer) -> AsyncIterator[Deliverer]:
    async with trio.open_nursery() as nursery:
        await nursery.start(deliverer.serve)
        yield deliverer
        nursery.cancel_scope.cancel()


async def owe(store: SqliteJobStore, url: str, status: str = "completed") -> str:
    """A job that ended with a callback: it owes a delivery, due now."""
    job_id = str(uuid.uuid4())
    await store.insert(record(job_id, status=status, callback_url=url, finished_at=time.time()))
    return job_id


async def row(store: SqliteJobStore, job_id: str) -> DeliveryRecord:
    return (await store.deliveries.of([job_id]))[job_id]


async def wait_row(
    store: SqliteJobStore, job_id: str, done: Callable[[DeliveryRecord], bool]
) -> DeliveryRecord:
    """The delivery's row once `done` holds for it (checked every 10 ms, for at most 5 s)."""
    with trio.fail_after(TIMEOUT_S):
        while not done(found := await row(store, job_id)):
            await trio.sleep(0.01)
    return found


def status_is(status: str) -> Callable[[DeliveryRecord], bool]:
    return lambda delivery: delivery.status == status


def headers_of(head: bytes) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])


def count(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "imgjobs_webhook_deliveries_total", {"outcome": outcome}
    )
    return value or 0.0


async def hang(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def close_mid_answer(stream: trio.SocketStream) -> None:
    await stream.send_all(b"HTTP/1.1 2")
    await stream.aclose()


def tolerant(behaviour: Behaviour) -> Behaviour:
    """`behaviour`, for a client that may hang up before it is done (as ours does)."""

    async def respond(stream: trio.SocketStream) -> None:
        with suppress(trio.BrokenResourceError):
            await behaviour(stream)

    return respond


async def test_a_completed_job_is_delivered_once_signed(store: SqliteJobStore) -> None:
    deliverer = make_deliverer(store)
    async with open_receiver(answer(200)) as receiver, serving(deliverer):
        job_id = await owe(store, receiver.url)
        delivered = await wait_row(store, job_id, status_is("delivered"))
    assert (delivered.attempts, delivered.last_status) == (1, "200")
    assert delivered.claimed_by is None
    assert delivered.delivered_at is not None
    [(head, body)] = receiver.requests
    headers = headers_of(head)
    assert headers["webhook-id"] == "msg_" + job_id.replace("-", "")
    payload = Webhook(SECRET).verify(body, headers)
    assert payload == msgspec.json.decode(await render(delivered))
    assert payload["type"] == "job.completed"
    assert payload["data"] == {"id": job_id, "status": "completed"}
    assert delivered.payload == body


async def test_failures_are_retried_with_the_same_id_and_bytes(store: SqliteJobStore) -> None:
    answers = [answer(500), answer(500), answer(204)]

    async def flaky(stream: trio.SocketStream) -> None:
        await answers.pop(0)(stream)

    metrics = Metrics()
    async with open_receiver(flaky) as receiver, serving(make_deliverer(store, metrics=metrics)):
        job_id = await owe(store, receiver.url, status="failed")
        delivered = await wait_row(store, job_id, status_is("delivered"))
    assert (delivered.attempts, delivered.last_status) == (3, "204")
    assert len(receiver.requests) == 3
    assert len({body for _, body in receiver.requests}) == 1
    assert {headers_of(head)["webhook-id"] for head, _ in receiver.requests} == {
        delivered.webhook_id
    }
    for head, body in receiver.requests:
        assert Webhook(SECRET).verify(body, headers_of(head))["type"] == "job.failed"
    assert (count(metrics, "retried"), count(metrics, "delivered"), count(metrics, "failed")) == (
        2,
        1,
        0,
    )


@pytest.mark.parametrize(
    ("behaviour", "delivered", "shown"),
    [
        (answer(301, extra=b"Location: http://127.0.0.1:1/elsewhere\r\n"), False, "301"),
        (close_mid_answer, False, "RemoteProtocolError"),
        (tolerant(answer(200, b"x" * (10 * 1024 * 1024))), True, "200"),  # 10 MB: never read
    ],
    ids=["redirect", "closed", "10-MB-answer"],
)
async def test_receivers_that_misbehave_are_recorded_and_the_loop_goes_on(
    store: SqliteJobStore, behaviour: Behaviour, delivered: bool, shown: str
) -> None:
    metrics = Metrics()
    async with (
        open_receiver(behaviour) as bad,
        open_receiver(answer(204)) as good,
        serving(make_deliverer(store, metrics=metrics, retry_base_s=60)),  # one attempt each
    ):
        bad_job = await owe(store, bad.url)
        attempted = await wait_row(store, bad_job, lambda d: d.attempts == 1)
        later_job = await owe(store, good.url)
        await wait_row(store, later_job, status_is("delivered"))
    assert attempted.status == ("delivered" if delivered else "pending")
    assert shown in (attempted.last_status or "")
    assert len(bad.requests) == 1  # a redirect is not followed, a failure waits its turn
    assert count(metrics, "retried") == (0 if delivered else 1)
    assert count(metrics, "delivered") == (2 if delivered else 1)


async def test_a_hanging_receiver_costs_its_own_attempt_only(store: SqliteJobStore) -> None:
    metrics = Metrics()
    deliverer = make_deliverer(store, metrics=metrics, attempt_timeout_s=1.0, retry_base_s=60)
    async with (
        open_receiver(hang) as slow,
        open_receiver(answer(200)) as fast,
        serving(deliverer),
    ):
        slow_job = await owe(store, slow.url)
        fast_job = await owe(store, fast.url)
        await wait_row(store, fast_job, status_is("delivered"))
        meanwhile = await row(store, slow_job)
        with trio.fail_after(TIMEOUT_S):  # the fast attempt's task ends just after its record
            while deliverer.statistics().in_flight != 1:
                await trio.sleep(0.01)
        timed_out = await wait_row(store, slow_job, lambda d: d.attempts == 1)
    assert (meanwhile.attempts, meanwhile.claimed_by) == (0, deliverer.owner)
    assert (timed_out.status, timed_out.last_status) == ("pending", "timeout after 1 s")
    assert timed_out.next_attempt_at is not None
    assert timed_out.next_attempt_at > time.time() + 30
    assert count(metrics, "retried") == 1


async def test_at_most_concurrency_attempts_run_at_once(store: SqliteJobStore) -> None:
    deliverer = make_deliverer(store, concurrency=1, attempt_timeout_s=0.5, retry_base_s=60)
    async with (
        open_receiver(hang) as slow,
        open_receiver(answer(200)) as fast,
        serving(deliverer),
    ):
        slow_job = await owe(store, slow.url)
        with trio.fail_after(TIMEOUT_S):
            while not slow.requests:
                await trio.sleep(0.01)
        fast_job = await owe(store, fast.url)
        delivered = await wait_row(store, fast_job, status_is("delivered"))
    timed_out = await row(store, slow_job)
    assert timed_out.last_status == "timeout after 0.5 s"
    # The one slot was taken until the slow attempt gave up: then the fast one ran.
    assert delivered.delivered_at is not None
    assert delivered.delivered_at >= timed_out.updated_at
    assert deliverer.statistics() == DelivererStatistics(in_flight=0, concurrency=1)


async def test_a_delivery_too_old_to_retry_fails_for_good(store: SqliteJobStore) -> None:
    metrics = Metrics()
    deliverer = make_deliverer(store, metrics=metrics, give_up_after_s=0)
    async with open_receiver(answer(503)) as receiver, serving(deliverer):
        job_id = await owe(store, receiver.url)
        failed = await wait_row(store, job_id, status_is("failed"))
        assert await store.deliveries.next_due() is None
    assert (failed.attempts, failed.last_status, failed.next_attempt_at) == (1, "503", None)
    assert len(receiver.requests) == 1
    assert await store.deliveries.claim_due(owner="anyone", lease_s=60, limit=10) == []
    assert (count(metrics, "failed"), count(metrics, "retried")) == (1, 0)


async def test_a_dead_processs_claim_is_taken_back_at_start(store: SqliteJobStore) -> None:
    gone = await trio.lowlevel.open_process(["true"])
    await gone.wait()
    host, _, rest = new_owner_id().partition("/")
    dead_owner = f"{host}/{gone.pid}/{rest.partition('/')[2]}"
    async with open_receiver(answer(200)) as receiver:
        job_id = await owe(store, receiver.url)
        claimed = await store.deliveries.claim_due(owner=dead_owner, lease_s=3600, limit=10)
        assert [c.job_id for c in claimed] == [job_id]
        async with serving(make_deliverer(store)):
            delivered = await wait_row(store, job_id, status_is("delivered"))
    assert delivered.attempts == 1
    assert len(receiver.requests) == 1


async def test_a_live_processs_claim_is_left_alone(store: SqliteJobStore) -> None:
    """Another owner of this very process (alive, then) keeps its claim until its lease ends."""
    async with open_receiver(answer(200)) as receiver:
        held = await owe(store, receiver.url)
        await store.deliveries.claim_due(owner=new_owner_id(), lease_s=3600, limit=10)
        async with serving(make_deliverer(store)):
            later = await owe(store, receiver.url)
            await wait_row(store, later, status_is("delivered"))
    assert (await row(store, held)).attempts == 0
    assert len(receiver.requests) == 1


async def test_a_delivered_webhook_is_never_sent_again(store: SqliteJobStore) -> None:
    deliverer = make_deliverer(store, poll_s=60)  # only nudges wake it once it is idle
    async with open_receiver(answer(200)) as receiver, serving(deliverer):
        first = await owe(store, receiver.url)
        deliverer.nudge()
        await wait_row(store, first, status_is("delivered"))
        for _ in range(3):
            deliverer.nudge()
            await trio.sleep(0)
        second = await owe(store, receiver.url)
        deliverer.nudge()
        await wait_row(store, second, status_is("delivered"))
        assert await store.deliveries.next_due() is None
    ids = [headers_of(head)["webhook-id"] for head, _ in receiver.requests]
    assert ids == [(await row(store, job)).webhook_id for job in (first, second)]
    assert (await row(store, first)).attempts == 1


async def test_a_job_deleted_before_its_delivery_fails_it(store: SqliteJobStore) -> None:
    async def deleted(delivery: DeliveryRecord) -> bytes | None:
        return None

    metrics = Metrics()
    deliverer = make_deliverer(store, metrics=metrics, payload_of=deleted)
    async with open_receiver(answer(200)) as receiver, serving(deliverer):
        job_id = await owe(store, receiver.url)
        failed = await wait_row(store, job_id, status_is("failed"))
    assert (failed.attempts, failed.last_status, failed.payload) == (1, "job deleted", None)
    assert receiver.requests == []
    assert count(metrics, "failed") == 1


async def test_stopping_mid_attempt_leaves_the_delivery_owed(store: SqliteJobStore) -> None:
    deliverer = make_deliverer(store)
    async with open_receiver(hang) as receiver:
        job_id = await owe(store, receiver.url)
        async with serving(deliverer):
            with trio.fail_after(TIMEOUT_S):
                while not receiver.requests:
                    await trio.sleep(0.01)
    left = await row(store, job_id)
    assert (left.status, left.attempts, left.claimed_by) == ("pending", 0, deliverer.owner)
    assert left.payload == receiver.requests[0][1]  # a retry sends these very bytes
    assert deliverer.statistics().in_flight == 0


async def test_a_deliverer_needs_room_for_one_attempt(store: SqliteJobStore) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        make_deliverer(store, concurrency=0)

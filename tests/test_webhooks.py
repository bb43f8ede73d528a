"""One webhook attempt against real receivers that misbehave, and the signatures and retry
schedule, checked with the `standardwebhooks` package's own verifier."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial

import httpx
import pytest
import trio
from standardwebhooks.webhooks import Webhook

from app.webhooks import Signer, attempt_delivery, new_webhook_id, next_delay_s

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
Behaviour = Callable[[trio.SocketStream], Awaitable[None]]


class Receiver:
    """A raw HTTP receiver on loopback: records each request, then does `behaviour`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.url = ""

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await stream.receive_some(65536)
        self.requests.append((head, body))
        await self.behaviour(stream)


@asynccontextmanager
async def open_receiver(behaviour: Behaviour) -> AsyncIterator[Receiver]:
    receiver = Receiver(behaviour)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, receiver.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        receiver.url = f"http://hooks.test:{port}/imgjobs"
        yield receiver
        nursery.cancel_scope.cancel()


async def loopback(host: str, port: int) -> list[str]:
    """The resolver seam: every name is this machine (what a hostile DNS could answer)."""
    return ["127.0.0.1"]


def answer(status: int, body: bytes = b"", extra: bytes = b"") -> Behaviour:
    async def respond(stream: trio.SocketStream) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n".encode() + extra
        await stream.send_all(head + b"\r\n" + body)

    return respond


async def send(receiver: Receiver, body: bytes = b'{"type": "job.completed"}') -> object:
    signer = Signer(SECRET)
    headers = signer.headers(new_webhook_id(), int(datetime.now(UTC).timestamp()), body)
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            return await attempt_delivery(
                client, receiver.url, body, headers, allow_private=True, resolver=loopback
            )


async def test_a_2xx_is_delivered_and_the_signature_verifies_with_the_reference_verifier() -> None:
    async with open_receiver(answer(204)) as receiver:
        attempt = await send(receiver, b'{"type": "job.completed", "data": {"id": "x"}}')
    assert attempt.delivered  # type: ignore[attr-defined]
    head, body = receiver.requests[0]
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert lines[0] == "POST /imgjobs HTTP/1.1"
    assert headers["Host"] == receiver.url.split("/")[2]  # the name, not the address
    assert Webhook(SECRET).verify(body, headers) == {"type": "job.completed", "data": {"id": "x"}}
    tampered = dict(headers, **{"webhook-id": "msg_other"})
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(body, tampered)


@pytest.mark.parametrize(
    ("behaviour", "shown"),
    [
        (answer(500, b"boom"), "500"),
        (answer(301, extra=b"Location: http://127.0.0.1:1/elsewhere\r\n"), "301"),
        (answer(200, b"x" * (10 * 1024 * 1024)), "200"),  # 10 MB: never read
    ],
)
async def test_receivers_that_answer_badly_or_at_length(behaviour: Behaviour, shown: str) -> None:
    async with open_receiver(behaviour) as receiver:
        attempt = await send(receiver)
    assert attempt.describe() == shown  # type: ignore[attr-defined]
    assert attempt.delivered == (shown == "200")  # type: ignore[attr-defined]
    assert len(receiver.requests) == 1  # the redirect was not followed


async def test_a_receiver_that_closes_before_answering_is_an_error_not_a_crash() -> None:
    async def close(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 2")
        await stream.aclose()

    async with open_receiver(close) as receiver:
        attempt = await send(receiver)
    assert not attempt.delivered  # type: ignore[attr-defined]
    assert "RemoteProtocolError" in attempt.describe()  # type: ignore[attr-defined]


async def test_a_2xx_cut_off_in_its_body_was_still_a_2xx() -> None:
    """The receiver said 2xx: delivered, as Standard Webhooks counts it; the body is unread."""

    async def half(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        await stream.aclose()

    async with open_receiver(half) as receiver:
        attempt = await send(receiver)
    assert attempt.delivered  # type: ignore[attr-defined]


async def test_a_hanging_receiver_costs_the_callers_time_limit_only() -> None:
    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with open_receiver(hang) as receiver, httpx.AsyncClient() as client:
        with trio.move_on_after(0.5) as limit:
            await attempt_delivery(
                client, receiver.url, b"{}", {}, allow_private=True, resolver=loopback
            )
    assert limit.cancelled_caught


async def test_a_name_resolving_to_loopback_is_refused_without_a_connection() -> None:
    async with open_receiver(answer(200)) as receiver, httpx.AsyncClient() as client:
        attempt = await attempt_delivery(
            client, receiver.url, b"{}", {}, allow_private=False, resolver=loopback
        )
    assert not attempt.delivered
    assert "refused" in attempt.describe()
    assert "loopback" in attempt.describe()
    assert receiver.requests == []


def test_retries_back_off_doubling_with_jitter_at_most_an_hour_apart() -> None:
    rng = random.Random(7)
    delays = [next_delay_s(n, base_s=5, rng=rng) for n in range(1, 16)]
    assert 4 <= delays[0] <= 6
    assert 8 <= delays[1] <= 12
    assert all(delay <= 3600 for delay in delays)
    assert delays[-1] >= 2880  # capped, jitter kept below the cap
    assert len({round(d, 3) for d in delays}) == len(delays)  # jittered
    # Kept up for 24 h: the schedule reaches a day within a few dozen attempts.
    total, attempts = 0.0, 0
    while total < 24 * 3600:
        attempts += 1
        total += next_delay_s(attempts, base_s=5, rng=rng)
    assert 25 <= attempts <= 40


def test_a_secret_must_be_whsec_base64_of_16_bytes_or_more() -> None:
    for bad in ("whsec_!!!", "whsec_c2hvcnQ="):
        with pytest.raises(ValueError, match="webhook secret"):
            Signer(bad)
    now = int(datetime.now(UTC).timestamp())
    headers = Signer(SECRET).headers("msg_1", now, b"{}")
    assert Webhook(SECRET).verify(b"{}", headers) == {}

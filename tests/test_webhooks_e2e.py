"""Webhooks end to end: real server processes, real receivers on loopback, SIGKILL.

A delivery owed when the server is killed (mid-attempt, or between attempts) is delivered
after the restart, once, under the same `webhook-id`, with the same bytes; the body verifies
with the `standardwebhooks` package's own verifier; the job view shows the delivery.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from standardwebhooks.webhooks import Webhook

from app.settings import Settings
from tests.conftest import BAD, GOOD
from tests.servers import ServerProcess, job_body, make_settings, wait_done
from tests.test_webhooks import SECRET, Receiver, answer, open_receiver

SMALL = GOOD / "pillow__pil123p.png"


def settings_for(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        webhook_secret=SECRET,
        webhook_allow_private=True,  # the receivers are on loopback
        webhook_retry_base_s=1.0,
        worker_pool_size=1,
    )


def headers_of(head: bytes) -> dict[str, str]:
    lines = head.decode().split("\r\n")[1:]
    return {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}


async def submit_with_callback(
    url: str, receiver: Receiver, image: Path = SMALL, **extra: Any
) -> str:
    callback = receiver.url.replace("hooks.test", "127.0.0.1")
    body = json.loads(job_body(image))
    body.update(callback_url=callback, **extra)
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def webhook_of(
    url: str, job_id: str, status: str, *, attempts: int | None = None, timeout_s: float = 30
) -> Any:
    """The job's view once its webhook has reached `status` (after `attempts`, if given)."""
    async with httpx.AsyncClient(base_url=url) as client:
        with trio.fail_after(timeout_s):
            while True:
                view = (await client.get(f"/jobs/{job_id}")).json()
                webhook = view.get("webhook", {})
                if webhook.get("status") == status and attempts in (None, webhook["attempts"]):
                    return view
                await trio.sleep(0.05)


async def requests_reach(receiver: Receiver, count: int, *, timeout_s: float = 30) -> None:
    with trio.fail_after(timeout_s):
        while len(receiver.requests) < count:
            await trio.sleep(0.02)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def test_a_finished_job_is_delivered_signed_with_its_view_and_metadata(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with open_receiver(answer(204)) as receiver:
        server = ServerProcess(settings_for(tmp_path))
        url = await server.start(nursery)
        job_id = await submit_with_callback(url, receiver, metadata={"order": 7})
        view = await webhook_of(url, job_id, "delivered")
        assert view["webhook"] == {"status": "delivered", "attempts": 1, "last_status": "204"}
        assert view["callback_url"].startswith("http://127.0.0.1:")
        head, body = receiver.requests[0]
        event = Webhook(SECRET).verify(body, headers_of(head))
        assert event["type"] == "job.completed"
        assert event["data"]["id"] == job_id
        assert event["data"]["status"] == "completed"
        assert event["data"]["metadata"] == {"order": 7}
        assert headers_of(head)["webhook-id"] == "msg_" + job_id.replace("-", "")
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0


async def test_a_failed_job_is_announced_as_job_failed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with open_receiver(answer(200)) as receiver:
        server = ServerProcess(settings_for(tmp_path))
        url = await server.start(nursery)
        # accepted at submit (its header is whole), failed by the worker (half a photo)
        job_id = await submit_with_callback(url, receiver, BAD / "handmade__Storm_first_half.jpg")
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await wait_done(client, job_id))["status"] == "failed"
        await webhook_of(url, job_id, "delivered")
        head, body = receiver.requests[0]
        event = Webhook(SECRET).verify(body, headers_of(head))
        assert event["type"] == "job.failed"
        assert event["data"]["error"]["code"] == "truncated_image"
        server.signal(signal.SIGTERM)
        await server.wait()


@pytest.mark.parametrize("killed", ["mid-attempt", "between-attempts"])
async def test_a_delivery_owed_at_sigkill_is_delivered_after_restart_once(
    tmp_path: Path, nursery: trio.Nursery, killed: str
) -> None:
    async def first_hangs_or_fails_then_204(stream: trio.SocketStream) -> None:
        if len(receiver.requests) == 1:
            if killed == "mid-attempt":
                await trio.sleep_forever()  # the server dies while waiting for this answer
            await answer(500)(stream)
            return
        await answer(204)(stream)

    settings = settings_for(tmp_path)
    async with open_receiver(first_hangs_or_fails_then_204) as receiver:
        first = ServerProcess(settings)
        url = await first.start(nursery)
        job_id = await submit_with_callback(url, receiver)
        await requests_reach(receiver, 1)
        if killed == "between-attempts":
            view = await webhook_of(url, job_id, "pending", attempts=1)  # a retry owed
            assert view["webhook"]["last_status"] == "500"
            assert "next_attempt_at" in view["webhook"]
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        killed_at = time.monotonic()

        second = ServerProcess(settings)
        url = await second.start(nursery)
        view = await webhook_of(url, job_id, "delivered")
        delivered_s = time.monotonic() - killed_at
        assert len(receiver.requests) == 2
        ids = {headers_of(head)["webhook-id"] for head, _ in receiver.requests}
        assert ids == {"msg_" + job_id.replace("-", "")}  # one id across the restart
        assert receiver.requests[0][1] == receiver.requests[1][1]  # the same bytes
        head, body = receiver.requests[1]
        assert Webhook(SECRET).verify(body, headers_of(head))["data"]["id"] == job_id
        recorded = 1 if killed == "mid-attempt" else 2  # a killed attempt records nothing
        assert view["webhook"] == {
            "status": "delivered",
            "attempts": recorded,
            "last_status": "204",
        }

        # Never again after the 2xx: a later job's delivery goes out, the first one's does not.
        later = await submit_with_callback(url, receiver)
        await webhook_of(url, later, "delivered")
        assert len(receiver.requests) == 3
        assert headers_of(receiver.requests[2][0])["webhook-id"] == "msg_" + later.replace("-", "")
        print(f"webhook {killed}: delivered {delivered_s:.2f} s after SIGKILL, requests 2")
        second.signal(signal.SIGTERM)
        await second.wait()

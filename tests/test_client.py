"""`app.client` against a real hypercorn server on a free port: both clients, every call,
the error tree, idempotent and rate-limited submits, callbacks and metadata, views of a
newer server, and that the client carries nothing of the server with it.

The sync `Client` blocks, so it runs in a thread (`trio.to_thread.run_sync`) beside the
in-process server; `AsyncClient` runs under trio here, and under asyncio in a thread.
"""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import trio
from PIL import Image

from app import models
from app.client import (
    MAX_QUERY_SPEC_BYTES,
    AsyncClient,
    Client,
    ClientError,
    HTTPError,
    JobFailed,
    JobView,
    Submitted,
    UnexpectedResponse,
    Unreachable,
    WaitTimedOut,
)
from app.models import Document, Output
from imaging.document import Resize
from tests.conftest import BAD, GOOD
from tests.servers import RunningServer, make_settings, open_server
from tests.test_webhooks import SECRET, answer, open_receiver

ELEPHANTS = GOOD / "mate__Elephants.jpg"  # 1920x1080 JPEG
CAMERA = GOOD / "skimage__camera.png"  # 512x512 PNG
TRUNCATED = BAD / "handmade__Storm_first_half.jpg"  # accepted at submit, fails in the worker
NOT_AN_IMAGE = BAD / "handmade__text.jpg"
FLOWER = GOOD / "pillow__flower.webp"  # small: 30 KB


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with open_server(make_settings(tmp_path / "server")) as server:
        yield server


def decoded(data: bytes) -> tuple[str | None, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.format, image.size


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was just free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_a_document_job_end_to_end_with_the_sync_client(
    server: RunningServer, tmp_path: Path
) -> None:
    def scenario() -> None:
        with Client(server.url) as client:
            assert client.health().status == "healthy"
            submitted = client.submit(
                ELEPHANTS,
                document=Document(steps=[Resize(width=300)], output=Output(format="png")),
            )
            assert submitted.status == "pending"
            job = client.wait(submitted.job_id, timeout_s=60, check=True)
            assert isinstance(job, JobView)
            assert (job.status, job.operation) == ("completed", "steps")
            assert job.variants is not None
            view = job.variants["default"]
            assert (view.format, view.width, view.height) == ("png", 300, 169)
            data = client.download(job.id)
            assert len(data) == view.bytes
            assert decoded(data) == ("PNG", (300, 169))
            target = tmp_path / "out.png"
            assert client.download_to(job.id, target, variant="default") == view.bytes
            assert target.read_bytes() == data
            assert client.job(job.id).status == "completed"
            client.delete(job.id)
            with pytest.raises(HTTPError) as missing:
                client.job(job.id)
            assert (missing.value.status, missing.value.code) == (404, "not_found")

    await trio.to_thread.run_sync(scenario)
    assert names(tmp_path) == ["out.png", "server"]


async def test_a_seed_job_with_the_async_client_under_trio(server: RunningServer) -> None:
    async with AsyncClient(server.url) as client:
        image = CAMERA.read_bytes()
        submitted = await client.submit(image, thumbnail=(200, 100), output_format="jpeg")
        job = await client.wait(submitted.job_id, timeout_s=60)
        assert (job.status, job.operation, job.output_format) == ("completed", "thumbnail", "jpeg")
        assert (job.result_width, job.result_height) == (100, 100)
        assert decoded(await client.download(job.id)) == ("JPEG", (100, 100))
        exact = await client.submit(image, resize=(64, 32))
        job = await client.wait(exact.job_id, timeout_s=60)
        assert decoded(await client.download(job.id)) == ("PNG", (64, 32))


async def test_the_async_client_under_asyncio(server: RunningServer, tmp_path: Path) -> None:
    target = tmp_path / "small.webp"

    async def scenario() -> tuple[Any, ...]:
        async with AsyncClient(server.url) as client:
            assert (await client.health()).status == "healthy"
            description = await client.probe(ELEPHANTS)
            steps = [{"op": "resize", "width": 200}]
            submitted = await client.submit(ELEPHANTS, steps=steps, output={"format": "webp"})
            job = await client.wait(submitted.job_id, timeout_s=60, check=True)
            written = await client.download_to(job.id, target)
            await client.delete(job.id)
            return description, job, written

    description, job, written = await trio.to_thread.run_sync(lambda: asyncio.run(scenario()))
    assert (description.format, description.width, description.height) == ("JPEG", 1920, 1080)
    assert job.status == "completed"
    assert written == target.stat().st_size
    assert decoded(target.read_bytes()) == ("WEBP", (200, 112))


async def test_probe_and_dry_run_create_nothing(server: RunningServer, tmp_path: Path) -> None:
    async with AsyncClient(server.url) as client:
        description = await client.probe(ELEPHANTS.read_bytes())
        assert (description.width, description.height, description.bytes) == (
            1920,
            1080,
            ELEPHANTS.stat().st_size,
        )
        steps = [
            {"op": "crop", "width": 0.5, "height": 1.0},
            {"op": "resize", "width": 400},
            {"op": "rotate", "angle": 30},
        ]
        plan = await client.submit(ELEPHANTS, steps=steps, dry_run=True)
        planned = plan.variants["default"]
        assert (planned.format, planned.width, planned.height) == ("jpeg", 572, 590)
        assert (await client.health()).queue_depth == 0
    stored = [path.name for path in (tmp_path / "server").rglob("*") if path.is_file()]
    assert sorted(name for name in stored if not name.startswith("jobs.db")) == [".imgjobs.lock"]


async def test_a_long_document_goes_as_a_form(server: RunningServer) -> None:
    """Past the query string's limit, the document travels as a multipart `spec` field."""
    chain = [
        {"op": "modulate", "brightness": 1.0, "saturation": 1.0, "contrast": 1.0},
        {"op": "extend", "top": 1, "right": 1, "bottom": 1, "left": 1, "background": "#102030"},
    ] * 4
    variants = {
        f"width-{width}": {"steps": [{"op": "resize", "width": width}, *chain]}
        for width in range(100, 110)
    }
    assert len(quote(msgspec.json.encode({"variants": variants}), safe="")) > MAX_QUERY_SPEC_BYTES
    async with AsyncClient(server.url) as client:
        plan = await client.submit(CAMERA, variants=variants, dry_run=True)
        assert {name: planned.width for name, planned in plan.variants.items()} == {
            f"width-{width}": width + 8 for width in range(100, 110)
        }
        submitted = await client.submit(CAMERA, variants=variants)
        job = await client.wait(submitted.job_id, timeout_s=60, check=True)
        assert job.variants is not None
        assert sorted(job.variants) == sorted(variants)
        data = await client.download(job.id, variant="width-105")
        assert decoded(data) == ("PNG", (113, 113))


async def test_errors_carry_the_status_code_and_message(server: RunningServer) -> None:
    async with AsyncClient(server.url) as client:
        with pytest.raises(HTTPError) as unsupported:
            await client.submit(NOT_AN_IMAGE)
        assert (unsupported.value.status, unsupported.value.code) == (415, "unsupported_format")
        with pytest.raises(HTTPError) as invalid:
            await client.submit(CAMERA, steps=[{"op": "resize", "width": 5000}])
        error = invalid.value
        assert (error.status, error.code) == (400, "invalid_field")
        assert "steps[0].width" in error.message
        assert str(error).startswith("HTTP 400 invalid_field: invalid field `steps[0].width`")
        with pytest.raises(HTTPError) as unknown:
            await client.job("not-a-job")
        assert unknown.value.status == 404
        assert isinstance(unknown.value, ClientError)


async def test_a_failed_job_is_returned_or_raised(server: RunningServer, tmp_path: Path) -> None:
    async with AsyncClient(server.url) as client:
        submitted = await client.submit(TRUNCATED, steps=[{"op": "resize", "width": 100}])
        job = await client.wait(submitted.job_id, timeout_s=60)
        assert job.status == "failed"
        assert job.error is not None
        assert job.error.code == "truncated_image"
        with pytest.raises(JobFailed) as failed:
            await client.wait(submitted.job_id, check=True)
        assert failed.value.job.error == job.error
        assert "truncated_image" in str(failed.value)
        target = tmp_path / "never.jpg"
        with pytest.raises(HTTPError) as not_ready:
            await client.download_to(job.id, target)
        assert (not_ready.value.status, not_ready.value.code) == (409, "job_not_ready")
    assert names(tmp_path) == ["server"]  # no partial file either


async def test_an_unreachable_server() -> None:
    url = closed_port_url()
    async with AsyncClient(url) as client:
        with pytest.raises(Unreachable) as refused:
            await client.health()
    assert str(refused.value).startswith(f"cannot reach {url}: ")

    def sync() -> None:
        with Client(url) as client, pytest.raises(Unreachable):
            client.submit(CAMERA, resize=(10, 10))

    await trio.to_thread.run_sync(sync)


def fake_job(status: str) -> dict[str, Any]:
    return {
        "id": "5d1f0c56-0b4a-4a9e-9a51-6a3c4f1d2e10",
        "status": status,
        "input_path": "uploads/x.jpg",
        "output_path": "outputs/x.jpg",
        "operation": "steps",
        "width": 1,
        "height": 1,
        "output_format": "jpeg",
        "created_at": "2026-12-03T08:00:00Z",
        "updated_at": "2026-12-03T08:00:00Z",
    }


async def test_wait_gives_up_after_its_timeout() -> None:
    asked: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(float(request.url.params["wait"]))
        return httpx.Response(200, json=fake_job("processing"))

    async with AsyncClient("http://imgjobs.test", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(WaitTimedOut) as timed_out:
            await client.wait("5d1f0c56-0b4a-4a9e-9a51-6a3c4f1d2e10", timeout_s=0.01)
    assert isinstance(timed_out.value, TimeoutError)
    assert timed_out.value.job.status == "processing"
    assert asked[0] <= 0.01
    assert "still processing after 0.01 s" in str(timed_out.value)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGJOBS_URL", "http://images.example:9000/")
    monkeypatch.setenv("IMGJOBS_API_KEY", "s3cret")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="<html>a proxy's page</html>")

    with Client(transport=httpx.MockTransport(handler)) as client:
        assert client.url == "http://images.example:9000"
        with pytest.raises(UnexpectedResponse):
            client.health()
    assert str(seen[0].url) == "http://images.example:9000/health"
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    monkeypatch.delenv("IMGJOBS_API_KEY")
    with (
        Client("http://other.example", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(UnexpectedResponse),
    ):
        client.health()
    assert str(seen[1].url) == "http://other.example/health"
    assert "authorization" not in seen[1].headers


def test_a_job_is_described_one_way() -> None:
    with Client("http://imgjobs.test") as client:
        with pytest.raises(ValueError, match="give one of"):
            client.submit(b"...", resize=(1, 1), steps=[])
        with pytest.raises(ValueError, match="output_format goes with"):
            client.submit(b"...", output_format="png")


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    code = "import sys, app.client; print('\\n'.join(sorted(sys.modules)))"
    modules = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "app.client" in modules
    server_side = ("quart", "quart_trio", "hypercorn", "werkzeug", "trio", "sqlite3", "PIL")
    internals = (
        "app.service", "app.routes", "app.server", "app.store", "app.workers", "app.models",
        "imaging",
    )  # fmt: skip
    loaded = [
        name for name in modules if name.split(".")[0] in server_side or name.startswith(internals)
    ]
    assert loaded == []


def newer_view() -> bytes:
    """A job view as a later server might send it: a member, a step, a step field, a
    variant member and a webhook member this client has never heard of."""
    view = fake_job("completed") | {
        "priority": "high",
        "spec": {
            "variants": {
                "default": {
                    "steps": [
                        {"op": "resize", "width": 100, "sparkle": 0.5},
                        {"op": "hologram", "depth": 3},
                    ],
                    "output": {"format": "jxl", "effort": 7},
                }
            },
            "schedule": "later",
        },
        "variants": {
            "default": {
                "format": "jxl",
                "width": 100,
                "height": 56,
                "bytes": 2048,
                "download": "/jobs/x/variants/default",
                "dominant_colour": "#102030",
            }
        },
        "callback_url": "https://hooks.example.com/imgjobs",
        "metadata": {"order": 42},
        "webhook": {"status": "delivered", "attempts": 1, "last_status": "204", "signed": True},
        "reused": True,
    }
    return msgspec.json.encode(view)


def test_a_view_from_a_newer_server_decodes() -> None:
    data = newer_view()
    with pytest.raises(msgspec.ValidationError):  # what the server's own types would do
        msgspec.json.decode(data, type=models.JobView)
    job = msgspec.json.decode(data, type=JobView)
    assert (job.status, job.reused, job.metadata) == ("completed", True, {"order": 42})
    assert job.spec is not None
    assert job.spec["variants"]["default"]["steps"][0] == {
        "op": "resize",
        "width": 100,
        "sparkle": 0.5,
    }
    assert job.variants is not None
    assert (job.variants["default"].format, job.variants["default"].height) == ("jxl", 56)
    assert job.webhook is not None
    assert (job.webhook.status, job.webhook.attempts, job.webhook.last_status) == (
        "delivered", 1, "204",
    )  # fmt: skip
    assert b"priority" not in msgspec.json.encode(job)  # what it does not know is left out

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data, headers={"Content-Type": "application/json"})

    with Client("http://imgjobs.test", transport=httpx.MockTransport(handler)) as client:
        assert client.job("5d1f0c56-0b4a-4a9e-9a51-6a3c4f1d2e10") == job


async def test_an_idempotency_key_replays_the_first_job(server: RunningServer) -> None:
    steps = [{"op": "resize", "width": 64}]
    async with AsyncClient(server.url) as client:
        first = await client.submit(FLOWER, steps=steps, idempotency_key="order-17")
        again = await client.submit(FLOWER, steps=steps, idempotency_key="order-17")
        assert isinstance(first, Submitted)
        assert (first.replayed, again.replayed) == (False, True)
        assert again.job_id == first.job_id
        seed = await client.submit(FLOWER, resize=(32, 32), idempotency_key="order-18")
        seed_again = await client.submit(FLOWER, resize=(32, 32), idempotency_key="order-18")
        assert (seed_again.job_id, seed_again.replayed) == (seed.job_id, True)
        with pytest.raises(HTTPError) as reused:
            await client.submit(
                FLOWER, steps=[{"op": "resize", "width": 65}], idempotency_key="order-17"
            )
        assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")
        assert first.job_id in reused.value.message
        assert str(reused.value).startswith("HTTP 422 idempotency_key_reused: ")
        listed = await client.list_jobs()
        assert sorted(job.id for job in listed.jobs) == sorted([first.job_id, seed.job_id])
        for bad in ("", "k" * 256, "clé", "line\nbreak"):
            with pytest.raises(ValueError, match="idempotency key"):
                await client.submit(FLOWER, steps=steps, idempotency_key=bad)


def test_an_idempotency_key_with_the_sync_client() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers.get("Idempotency-Key")
        seen = key is not None and key in (r.headers.get("Idempotency-Key") for r in sent)
        sent.append(request)
        body = {"job_id": "j1", "status": "pending", "message": "Image processing job submitted"}
        return httpx.Response(
            202, json=body, headers={"Idempotent-Replayed": "true"} if seen else {}
        )

    with Client("http://imgjobs.test", transport=httpx.MockTransport(handler)) as client:
        first = client.submit(b"...", steps=[], idempotency_key="k-1")
        again = client.submit(b"...", steps=[], idempotency_key="k-1")
        plain = client.submit(b"...", steps=[])
    assert [r.headers.get("Idempotency-Key") for r in sent] == ["k-1", "k-1", None]
    assert (first.replayed, again.replayed, plain.replayed) == (False, True, False)
    assert first == Submitted(job_id="j1", message="Image processing job submitted")


@pytest.fixture
async def hooked(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server that signs webhooks and may call loopback receivers."""
    settings = make_settings(tmp_path / "server", webhook_secret=SECRET, webhook_allow_private=True)
    async with open_server(settings) as server:
        yield server


async def test_metadata_and_the_callback_go_with_the_job(hooked: RunningServer) -> None:
    metadata = {"order": 42, "tags": ["a", "b"], "customer": {"id": "c-7"}}
    long_chain = [{"op": "modulate", "brightness": 1.0, "saturation": 1.0}] * 10
    variants = {f"v{index}": {"steps": long_chain} for index in range(8)}
    async with open_receiver(answer(204)) as receiver, AsyncClient(hooked.url) as client:
        callback = receiver.url.replace("hooks.test", "127.0.0.1")
        parts = await client.submit(
            FLOWER, steps=[{"op": "resize", "width": 40}], metadata=metadata, callback_url=callback
        )
        whole = await client.submit(
            FLOWER, document=Document(steps=[Resize(width=30)]), metadata={"n": 1}
        )
        form = await client.submit(FLOWER, variants=variants, metadata={"n": 2})  # multipart
        seed = await client.submit(FLOWER, thumbnail=(20, 20), callback_url=callback)
        job = await client.wait(parts.job_id, timeout_s=60, check=True)
        assert (job.metadata, job.callback_url) == (metadata, callback)
        assert job.spec is not None
        assert "metadata" not in job.spec  # the document shows what to make, nothing else
        assert (await client.wait(whole.job_id, timeout_s=60)).metadata == {"n": 1}
        assert (await client.wait(form.job_id, timeout_s=60)).metadata == {"n": 2}
        seed_job = await client.wait(seed.job_id, timeout_s=60)
        assert (seed_job.operation, seed_job.callback_url, seed_job.metadata) == (
            "thumbnail", callback, None,
        )  # fmt: skip
        with trio.fail_after(30):
            while (job := await client.job(parts.job_id)).webhook is None or (
                job.webhook.status != "delivered"
            ):
                await trio.sleep(0.05)
        assert (job.webhook.attempts, job.webhook.last_status) == (1, "204")
        assert len(receiver.requests) >= 1


def test_metadata_needs_a_document() -> None:
    with Client("http://imgjobs.test") as client:
        with pytest.raises(ValueError, match="metadata goes in a job document"):
            client.submit(b"...", resize=(1, 1), metadata={"a": 1})
        with pytest.raises(ValueError, match="metadata given both"):
            client.submit(b"...", document={"metadata": {"a": 1}}, metadata={"a": 2})


async def test_a_rate_limited_submit_says_when_to_retry(tmp_path: Path) -> None:
    async with (
        open_server(make_settings(tmp_path / "server", rate_limit=1.0)) as server,
        AsyncClient(server.url) as client,
    ):
        steps = [{"op": "resize", "width": 16}]
        for _ in range(2):  # a burst of two
            await client.submit(FLOWER, steps=steps)
        with pytest.raises(HTTPError) as limited:
            await client.submit(FLOWER, steps=steps)
        assert (limited.value.status, limited.value.code) == (429, "rate_limited")
        assert limited.value.retry_after_s is not None
        assert 1 <= limited.value.retry_after_s <= 2
        assert len((await client.list_jobs()).jobs) == 2


def test_retry_after_is_seconds_or_a_date() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    answers = iter(["7", "Wed, 21 Oct 2015 07:28:00 GMT", soon, "later"])

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Retry-After": next(answers)}
        return httpx.Response(503, json={"code": "queue_full", "error": "busy"}, headers=headers)

    seen: list[float | None] = []
    with Client("http://imgjobs.test", transport=httpx.MockTransport(handler)) as client:
        for _ in range(4):
            with pytest.raises(HTTPError) as busy:
                client.health()
            assert (busy.value.status, busy.value.code) == (503, "queue_full")
            seen.append(busy.value.retry_after_s)
    assert seen[0] == 7.0
    assert seen[1] == 0.0  # a date gone by: now
    assert seen[2] is not None
    assert 80 < seen[2] <= 90
    assert seen[3] is None

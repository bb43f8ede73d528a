"""`app.client` against a real hypercorn server on a free port: both clients, every call,
the error tree, and that the client carries nothing of the server with it.

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
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import trio
from PIL import Image

from app.client import (
    MAX_QUERY_SPEC_BYTES,
    AsyncClient,
    Client,
    ClientError,
    HTTPError,
    JobFailed,
    UnexpectedResponse,
    Unreachable,
    WaitTimedOut,
)
from app.models import Document, JobView, Output
from imaging.document import Resize
from tests.conftest import BAD, GOOD
from tests.servers import RunningServer, make_settings, open_server

ELEPHANTS = GOOD / "mate__Elephants.jpg"  # 1920x1080 JPEG
CAMERA = GOOD / "skimage__camera.png"  # 512x512 PNG
TRUNCATED = BAD / "handmade__Storm_first_half.jpg"  # accepted at submit, fails in the worker
NOT_AN_IMAGE = BAD / "handmade__text.jpg"


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
    server_side = ("quart", "quart_trio", "hypercorn", "werkzeug", "trio", "sqlite3")
    internals = ("app.service", "app.routes", "app.server", "app.store", "app.workers")
    loaded = [
        name for name in modules if name.split(".")[0] in server_side or name.startswith(internals)
    ]
    assert loaded == []

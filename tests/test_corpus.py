"""Every corpus image over real HTTP: good ones through both operations, bad ones refused
at submit or failed with a reason, the server serving everyone else meanwhile."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from PIL import Image, ImageOps

from tests.conftest import BAD, GOOD, corpus_files
from tests.servers import job_body, make_settings, open_server, submit, wait_done

JSON = {"Content-Type": "application/json"}
BOX = (300, 200)
FAILURE_CODES = {
    "corrupt_image",
    "truncated_image",
    "image_too_large",
    "unsupported_format",
    "timeout",
    "worker_crashed",
    "out_of_memory",
}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, max_upload_bytes=32 * 1024 * 1024, job_timeout_s=30)
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
    ):
        yield client


def displayed_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            return height, width
        return width, height


def expected_size(operation: str, source: tuple[int, int]) -> tuple[int, int]:
    if operation == "resize":
        return BOX
    probe = Image.new("L", source)
    probe.thumbnail(BOX)
    return probe.size


@pytest.mark.parametrize("operation", ["resize", "thumbnail"])
async def test_every_good_image_is_processed_to_the_promised_size(
    client: httpx.AsyncClient, operation: str
) -> None:
    files = corpus_files(GOOD)
    assert len(files) >= 18
    ids: dict[Path, str] = {}
    for path in files:
        ids[path] = await submit(client, path, operation=operation, width=BOX[0], height=BOX[1])
    problems = []
    for path, job_id in ids.items():
        job = await wait_done(client, job_id)
        want = expected_size(operation, displayed_size(path))
        got = (job.get("result_width"), job.get("result_height"))
        if job["status"] != "completed" or got != want:
            problems.append(f"{path.name}: {job['status']} {got} != {want} {job.get('error')}")
            continue
        response = await client.get(f"/jobs/{job_id}/download")
        with Image.open(io.BytesIO(response.content)) as image:
            image.load()
            if image.size != want or (image.format or "").lower() != job["output_format"]:
                problems.append(f"{path.name}: downloaded {image.format} {image.size}")
            if image.getexif():
                problems.append(f"{path.name}: output keeps EXIF metadata")
    assert problems == []


async def test_a_portrait_photo_stays_portrait(client: httpx.AsyncClient) -> None:
    path = GOOD / "pillow__hopper_orientation_6.jpg"
    job_id = await submit(client, path, operation="thumbnail", width=100, height=50)
    job = await wait_done(client, job_id)
    with Image.open(path) as original:
        upright = ImageOps.exif_transpose(original)
        assert upright is not None
        want = upright.size
    assert job["result_height"] == 50
    assert job["result_width"] == round(50 * want[0] / want[1])


@pytest.mark.parametrize("path", corpus_files(BAD), ids=lambda p: p.name)
async def test_every_bad_file_is_refused_or_fails_cleanly(
    client: httpx.AsyncClient, path: Path
) -> None:
    bystander = await submit(client, GOOD / "skimage__camera.png", width=64, height=64)
    response = await client.post("/jobs", content=job_body(path), headers=JSON)
    if response.status_code == 202:
        job = await wait_done(client, response.json()["job_id"])
        if job["status"] == "failed":
            assert job["error"]["code"] in FAILURE_CODES, job
            message = job["error"]["message"]
            assert "Traceback" not in message
            assert "/" not in message
        else:
            # Some "bad" files are valid images with a lying extension or broken metadata.
            assert job["status"] == "completed", job
    else:
        assert response.status_code in (400, 413, 415, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["error"]
    assert (await wait_done(client, bystander))["status"] == "completed"
    assert (await client.get("/health")).json()["status"] == "healthy"


async def test_bad_files_in_flight_do_not_disturb_good_ones(client: httpx.AsyncClient) -> None:
    good = GOOD / "mate__Storm.jpg"
    submitted: list[str] = []
    async with trio.open_nursery() as nursery:

        async def send(path: Path) -> None:
            response = await client.post("/jobs", content=job_body(path), headers=JSON)
            if path.parent == GOOD:
                assert response.status_code == 202
                submitted.append(response.json()["job_id"])

        for path in corpus_files(BAD):
            nursery.start_soon(send, path)
            nursery.start_soon(send, good)
    for job_id in submitted:
        assert (await wait_done(client, job_id))["status"] == "completed"

"""The HTTP contract against a real hypercorn server on a free port, over real HTTP."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from PIL import Image

from tests.backends import stored_names
from tests.conftest import BAD, GOOD
from tests.servers import job_body, make_settings, open_server, submit, submit_slow, wait_done

ELEPHANTS = GOOD / "mate__Elephants.jpg"
HOPPER_PNG = GOOD / "skimage__camera.png"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, max_upload_bytes=2 * 1024 * 1024, admin_token="s3cret")
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["error"] == body["detail"]
    for word in words:
        assert word in body["error"], body
    return body


async def test_submit_answers_202_with_the_seed_body_and_a_location(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/jobs", content=job_body(ELEPHANTS), headers=JSON)
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"job_id", "status", "message"}
    assert body["status"] == "pending"
    assert body["message"] == "Image processing job submitted"
    assert str(uuid.UUID(body["job_id"])) == body["job_id"]
    assert response.headers["location"] == f"/jobs/{body['job_id']}"


async def test_completed_job_reports_keys_times_and_real_result_size(
    client: httpx.AsyncClient,
) -> None:
    job_id = await submit(client, ELEPHANTS, operation="thumbnail", width=300, height=300)
    job = await wait_done(client, job_id)
    assert job["status"] == "completed", job
    assert job["id"] == job_id
    assert job["operation"] == "thumbnail"
    assert (job["width"], job["height"]) == (300, 300)
    assert job["output_format"] == "jpeg"  # a JPEG input stays JPEG
    assert job["input_path"] == f"uploads/{job_id}.jpg"
    assert job["output_path"] == f"outputs/{job_id}.jpg"
    assert (job["result_width"], job["result_height"]) == (300, 169)
    assert job["result_bytes"] > 0
    assert "error" not in job
    assert job["created_at"].endswith("Z")
    assert job["updated_at"] >= job["created_at"]


async def test_download_sends_the_output_with_headers(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, ELEPHANTS, width=120, height=80, output_format="png")
    job = await wait_done(client, job_id)
    response = await client.get(f"/jobs/{job_id}/download")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(response.content) == job["result_bytes"]
    assert response.headers["content-disposition"] == f'attachment; filename="{job_id}.png"'
    etag = response.headers["etag"]
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "PNG"
        assert image.size == (120, 80)
    again = await client.get(f"/jobs/{job_id}/download", headers={"If-None-Match": etag})
    assert again.status_code == 304


async def test_jpg_is_an_alias_of_jpeg(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, HOPPER_PNG, width=50, height=40, output_format="jpg")
    job = await wait_done(client, job_id)
    assert job["output_format"] == "jpeg"
    response = await client.get(f"/jobs/{job_id}/download")
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["content-disposition"].endswith(f'"{job_id}.jpg"')


async def test_a_data_url_prefix_is_accepted(client: httpx.AsyncClient) -> None:
    data = "data:image/png;base64," + base64.b64encode(HOPPER_PNG.read_bytes()).decode()
    body = {"image_data": data, "operation": "resize", "width": 10, "height": 10}
    response = await client.post("/jobs", json=body)
    assert response.status_code == 202, response.text


async def test_health_reports_queue_and_pool(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert isinstance(body["timestamp"], int)
    assert body["queue_capacity"] == 1000
    assert body["pool_size"] == 2
    assert body["queue_depth"] == 0
    assert body["busy_workers"] == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", ["not valid JSON"]),
        (b"[1, 2]", ["invalid request", "object"]),
        (b'{"operation": "resize", "width": 1, "height": 1}', ["image_data"]),
        (b'{"image_data": "AAAA", "operation": "crop", "width": 1, "height": 1}', ["operation"]),
        (
            b'{"image_data": "AAAA", "operation": "resize", "width": 0, "height": 1}',
            ["width", ">= 1"],
        ),
        (
            b'{"image_data": "AAAA", "operation": "resize", "width": 1, "height": 99999}',
            ["height", "4096"],
        ),
        (
            b'{"image_data": "AAAA", "operation": "resize", "width": "1", "height": 1}',
            ["width", "int"],
        ),
        (
            b'{"image_data": "AAAA", "operation": "resize", "width": 1.5, "height": 1}',
            ["width", "int"],
        ),
        (
            b'{"image_data": "AAAA", "operation": "resize", "width": 1, "height": 1,'
            b' "output_format": "gif"}',
            ["output_format"],
        ),
        (
            b'{"image_data": "AAAA", "operation": "resize", "width": 1, "height": 1,'
            b' "colour": "red"}',
            ["unknown field", "colour"],
        ),
        (
            b'{"image_data": "!!not base64!!", "operation": "resize", "width": 1, "height": 1}',
            ["base64"],
        ),
        (b'{"image_data": "", "operation": "resize", "width": 1, "height": 1}', ["image_data"]),
    ],
)
async def test_bad_requests_get_400_naming_the_problem(
    client: httpx.AsyncClient, body: bytes, words: list[str]
) -> None:
    response = await client.post("/jobs", content=body, headers=JSON)
    assert_problem(response, 400, *words)


async def test_a_body_that_is_not_json_gets_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs", content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_problem(response, 415, "application/json")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("handmade__text.jpg", ["not a recognised image"]),
        ("pillow__duplicate_xref_entry.pdf", ["PDF"]),
        ("gnome__oceans.svg", ["SVG"]),
    ],
)
async def test_bytes_that_are_not_a_supported_image_get_415(
    client: httpx.AsyncClient, name: str, words: list[str]
) -> None:
    response = await client.post("/jobs", content=job_body(BAD / name), headers=JSON)
    body = assert_problem(response, 415, *words)
    assert body["code"] == "unsupported_format"


async def test_a_decoded_image_over_the_limit_gets_413(client: httpx.AsyncClient) -> None:
    # 2 MiB limit: the 16 MB photo is refused before it is stored.
    big = GOOD / "mate__Gulp.png"
    assert big.stat().st_size > 2 * 1024 * 1024 * 0.9
    response = await client.post(
        "/jobs", content=job_body(GOOD / "pillow__xmp_test.jpg"), headers=JSON
    )
    assert response.status_code == 202
    response = await client.post(
        "/jobs", content=job_body(b"\xff\xd8\xff" + bytes(2 * 1024 * 1024)), headers=JSON
    )
    assert_problem(response, 413, "upload limit")


async def status_of_head(url: str, head: bytes) -> bytes:
    """Send only the start of a request and return the status line of the answer."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(head)
        answer = b""
        with trio.fail_after(10):
            while b"\r\n" not in answer:
                answer += await stream.receive_some()
    return answer.split(b"\r\n", 1)[0]


async def chunked_upload(url: str, *, chunks: int, chunk_bytes: int) -> bytes:
    """POST a raw JPEG-looking body in chunks until the server answers; its status line."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"POST /jobs?operation=resize&width=5&height=5 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"\xff\xd8\xff" + bytes(chunk_bytes - 3)
        try:
            for _ in range(chunks):
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await stream.send_all(b"0\r\n\r\n")
        except trio.BrokenResourceError:
            pass  # answered and closed early, as it should
        answer = b""
        with trio.fail_after(10):
            while b"\r\n" not in answer:
                answer += await stream.receive_some()
    return answer.split(b"\r\n", 1)[0]


async def test_a_body_over_the_limit_gets_413_before_it_is_sent(tmp_path: Path) -> None:
    """The limit holds on the wire: the answer comes from the headers alone."""
    settings = make_settings(tmp_path, max_upload_bytes=1024 * 1024)
    async with open_server(settings) as server:
        status = await status_of_head(
            server.url,
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n{",
        )
    assert status.startswith(b"HTTP/1.1 413"), status


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nothing-here"), 404)
    response = await client.delete("/health")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]
    assert_problem(await client.put("/jobs", content=b"{}", headers=JSON), 405)


@pytest.mark.parametrize(
    "job_id", [str(uuid.uuid4()), "not-a-uuid", "..%2F..%2Fetc%2Fpasswd", "%00", "A" * 300]
)
async def test_unknown_or_malformed_ids_get_404(client: httpx.AsyncClient, job_id: str) -> None:
    assert_problem(await client.get(f"/jobs/{job_id}"), 404)
    assert_problem(await client.get(f"/jobs/{job_id}/download"), 404)


async def test_download_of_a_failed_job_is_409_with_its_status(
    client: httpx.AsyncClient,
) -> None:
    # Passes the header check, fails in the worker: the data ends mid-scan.
    job_id = await submit(client, BAD / "handmade__Storm_first_half.jpg")
    job = await wait_done(client, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] in {"truncated_image", "corrupt_image"}
    assert "/" not in job["error"]["message"]
    body = assert_problem(await client.get(f"/jobs/{job_id}/download"), 409, "failed")
    assert body["job_status"] == "failed"


async def test_admin_pool_is_guarded_by_the_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.put("/admin/pool", json={"size": 3}), 401)
    wrong = {"Authorization": "Bearer nope"}
    assert_problem(await client.put("/admin/pool", json={"size": 3}, headers=wrong), 401)
    auth = {"Authorization": "Bearer s3cret"}
    response = await client.put("/admin/pool", json={"size": 3}, headers=auth)
    assert response.status_code == 200
    assert response.json()["size"] == 3
    assert (await client.get("/health")).json()["pool_size"] == 3
    assert_problem(await client.put("/admin/pool", json={"size": 0}, headers=auth), 400, "size")
    assert_problem(await client.put("/admin/pool", content=b"{", headers=auth), 400)


async def test_admin_pool_is_off_without_a_token(tmp_path: Path) -> None:
    async with (
        open_server(make_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.put(
            "/admin/pool", json={"size": 3}, headers={"Authorization": "Bearer anything"}
        )
        assert_problem(response, 404, "ADMIN_TOKEN")


async def test_a_full_queue_answers_503_and_creates_no_job(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, queue_size=2, retry_after_s=3)
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        service = server.app.service
        service.pool.stop()  # no worker takes jobs: the queue fills deterministically
        await trio.sleep(0)
        accepted = [await submit(client, HOPPER_PNG) for _ in range(2)]
        response = await client.post("/jobs", content=job_body(HOPPER_PNG), headers=JSON)
        body = assert_problem(response, 503, "queue is full")
        assert response.headers["retry-after"] == "3"
        assert body["code"] == "queue_full"
        assert await service.store.count() == 2
        assert len(stored_names(tmp_path, "uploads")) == 2
        health = (await client.get("/health")).json()
        assert health["queue_depth"] == 2
        for job_id in accepted:
            assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "pending"


def test_problem_bodies_encode_as_json() -> None:
    from app.errors import JobNotReady

    problem = JobNotReady("job x is pending", job_status="pending").problem()
    assert msgspec.json.decode(msgspec.json.encode(problem))["job_status"] == "pending"


async def test_a_raw_image_body_with_query_parameters_is_a_job(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/jobs?operation=thumbnail&width=64&height=64&output_format=png",
        content=ELEPHANTS.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert response.status_code == 202, response.text
    job = await wait_done(client, response.json()["job_id"])
    assert (job["result_width"], job["result_height"], job["output_format"]) == (64, 36, "png")


async def test_a_multipart_upload_is_a_job(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs",
        data={"operation": "resize", "width": "30", "height": "20"},
        files={"image": ("camera.png", HOPPER_PNG.read_bytes(), "image/png")},
    )
    assert response.status_code == 202, response.text
    job = await wait_done(client, response.json()["job_id"])
    assert (job["result_width"], job["result_height"], job["output_format"]) == (30, 20, "png")


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("operation=resize&width=10", ["height"]),
        ("operation=resize&width=ten&height=10", ["width"]),
        ("operation=resize&width=10&height=10&quality=9", ["unknown field", "quality"]),
    ],
)
async def test_raw_uploads_with_bad_parameters_get_400(
    client: httpx.AsyncClient, query: str, words: list[str]
) -> None:
    response = await client.post(
        f"/jobs?{query}", content=HOPPER_PNG.read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert_problem(response, 400, *words)


async def test_a_multipart_form_without_an_image_part_gets_400(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/jobs",
        data={"operation": "resize", "width": "1", "height": "1"},
        files={"file": ("x.png", HOPPER_PNG.read_bytes(), "image/png")},
    )
    assert_problem(response, 400, "image")


async def test_a_raw_body_over_the_limit_gets_413_before_it_is_sent(
    client: httpx.AsyncClient,
) -> None:
    status = await status_of_head(
        str(client.base_url),
        b"POST /jobs?operation=resize&width=1&height=1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: image/jpeg\r\nContent-Length: 3000000\r\n\r\n\xff\xd8",
    )
    assert status.startswith(b"HTTP/1.1 413"), status


async def test_wait_answers_as_soon_as_the_job_finishes(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, ELEPHANTS, width=100, height=100)
    response = await client.get(f"/jobs/{job_id}", params={"wait": "30"})
    assert response.json()["status"] == "completed"


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
async def test_a_bad_wait_gets_400(client: httpx.AsyncClient, wait: str) -> None:
    job_id = await submit(client, HOPPER_PNG)
    assert_problem(await client.get(f"/jobs/{job_id}", params={"wait": wait}), 400, "wait")


def stored_files(settings_dir: Path) -> list[str]:
    return sorted(
        name for area in ("uploads", "outputs") for name in stored_names(settings_dir, area)
    )


async def test_delete_removes_a_finished_job_and_its_files(tmp_path: Path) -> None:
    async with (
        open_server(make_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        job_id = await submit(client, HOPPER_PNG, width=20, height=20)
        await wait_done(client, job_id)
        assert len(stored_files(tmp_path)) == 2
        response = await client.delete(f"/jobs/{job_id}")
        assert response.status_code == 204
        assert stored_files(tmp_path) == []
        assert_problem(await client.get(f"/jobs/{job_id}"), 404)
        assert_problem(await client.delete(f"/jobs/{job_id}"), 404)


async def test_delete_cancels_a_running_job_and_the_pool_goes_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_pool_size=1)
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
    ):
        slow = await submit_slow(client)
        queued = await submit(client, HOPPER_PNG, width=20, height=20)
        with trio.fail_after(30):
            while (await client.get(f"/jobs/{slow}")).json()["status"] != "processing":
                await trio.sleep(0.01)
        assert (await client.delete(f"/jobs/{slow}")).status_code == 204
        # The queued job runs next, on a fresh worker process.
        assert (await wait_done(client, queued))["status"] == "completed"
        assert (await client.get("/health")).json()["busy_workers"] == 0
        assert not any(slow in name for name in stored_files(tmp_path))
        assert list(settings.output_dir.glob(".*.tmp")) == []


async def test_finished_jobs_expire_after_the_ttl(tmp_path: Path) -> None:
    async with (
        open_server(make_settings(tmp_path, job_ttl_s=0.2)) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        job_id = await submit(client, HOPPER_PNG, width=20, height=20)
        await wait_done(client, job_id)
        with trio.fail_after(10):
            while (await client.get(f"/jobs/{job_id}")).status_code != 404:
                await trio.sleep(0.1)
        assert stored_files(tmp_path) == []


@pytest.mark.embedded_only  # (leftover objects in S3: tests/test_s3_storage.py)
async def test_start_up_removes_temporary_and_orphan_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        kept = await submit(client, HOPPER_PNG, width=20, height=20)
        await wait_done(client, kept)
    (settings.upload_dir / f".{uuid.uuid4()}.png.1234.tmp").write_bytes(b"half")
    (settings.output_dir / f"{uuid.uuid4()}.png").write_bytes(b"orphan")
    (settings.upload_dir / f"{uuid.uuid4()}.jpg").write_bytes(b"orphan")
    async with open_server(settings):
        assert stored_files(tmp_path) == sorted([f"{kept}.png", f"{kept}.png"])
        assert list(settings.upload_dir.glob(".*.tmp")) == []


async def test_refused_raw_uploads_leave_no_file_behind(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_upload_bytes=1024 * 1024)
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        not_an_image = await client.post(
            "/jobs?operation=resize&width=5&height=5",
            content=b"plain text" * 10_000,
            headers={"Content-Type": "image/jpeg"},
        )
        assert_problem(not_an_image, 415, "not a recognised image")

        # No Content-Length: the size is counted as the chunks come.
        status = await chunked_upload(server.url, chunks=40, chunk_bytes=64 * 1024)
        assert status.startswith(b"HTTP/1.1 413"), status
    assert list(settings.upload_dir.iterdir()) == [settings.upload_dir / ".imgjobs.lock"]

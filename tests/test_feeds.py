"""Following jobs over real HTTP: server-sent events per status change, and the listing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import BAD, GOOD
from tests.servers import job_body, make_settings, open_server, submit, submit_slow
from tests.test_api import assert_problem

PHOTO = GOOD / "mate__Elephants.jpg"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, worker_pool_size=1)
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def events(
    client: httpx.AsyncClient, job_id: str, first: trio.Event | None = None
) -> list[tuple[str, str]]:
    """Every (event, data) of the job's stream, read until the server ends it; `first` is
    set once the first event has arrived."""
    received: list[tuple[str, str]] = []
    with trio.fail_after(60):
        async with client.stream("GET", f"/jobs/{job_id}/events", timeout=None) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    received.append((name, line.removeprefix("data: ")))
                    if first is not None:
                        first.set()
    return received


async def test_the_stream_follows_a_job_to_its_end_and_then_closes(
    client: httpx.AsyncClient,
) -> None:
    await submit_slow(client)  # the only worker is busy: the next job waits, then runs
    job_id = await submit(client, PHOTO, operation="thumbnail", width=100, height=100)
    stream = await events(client, job_id)
    names = [name for name, _ in stream]
    assert names == ["pending", "processing", "completed"], names
    assert '"status":"completed"' in stream[-1][1]
    assert '"result_width":100' in stream[-1][1]


async def test_a_failed_job_ends_its_stream_with_failed(client: httpx.AsyncClient) -> None:
    job_id = await submit(
        client, BAD / "handmade__Storm_first_half.jpg", operation="resize", width=9, height=9
    )
    stream = await events(client, job_id)
    assert stream[-1][0] == "failed"
    assert '"code":"truncated_image"' in stream[-1][1]


async def test_a_job_deleted_while_followed_ends_its_stream(client: httpx.AsyncClient) -> None:
    busy = await submit_slow(client)  # keeps the only worker: the followed job stays pending
    queued = await submit(client, PHOTO, operation="thumbnail", width=100, height=100)
    received: list[str] = []
    first = trio.Event()

    async def follow() -> None:
        received.extend(name for name, _ in await events(client, queued, first))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        with trio.fail_after(30):
            await first.wait()
        assert (await client.delete(f"/jobs/{queued}")).status_code == 204
    assert received == ["pending", "deleted"]
    assert (await client.delete(f"/jobs/{busy}")).status_code == 204


async def test_events_of_an_unknown_job_are_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs/7e2c4b9e-0000-4000-8000-000000000000/events")
    assert_problem(response, 404, "no job")


async def test_the_listing_pages_newest_first_and_filters_by_status(
    client: httpx.AsyncClient,
) -> None:
    ids = [
        await submit(client, PHOTO, operation="thumbnail", width=40 + n, height=40)
        for n in range(5)
    ]
    for job_id in ids:
        await client.get(f"/jobs/{job_id}", params={"wait": 30})
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/jobs", params=params)).json()
        seen += [job["id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert pages == 3
    completed = (await client.get("/jobs", params={"status": "completed"})).json()
    assert [job["id"] for job in completed["jobs"]] == ids[::-1]
    failed = (await client.get("/jobs", params={"status": "failed"})).json()
    assert failed == {"jobs": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "done"}, "status must be one of"),
        ({"cursor": "not-ours"}, "cursor"),
    ],
)
async def test_a_bad_listing_query_is_a_400(
    client: httpx.AsyncClient, query: dict[str, str], words: str
) -> None:
    assert_problem(await client.get("/jobs", params=query), 400, words)


async def test_submit_with_wait_answers_201_with_the_finished_job_on_every_form(
    client: httpx.AsyncClient,
) -> None:
    image = PHOTO.read_bytes()
    query = {"wait": "30", "operation": "thumbnail", "width": "100", "height": "100"}
    answers = [
        await client.post(
            "/jobs",
            params={"wait": "30"},
            content=job_body(PHOTO, operation="thumbnail", width=100, height=100),
            headers={"Content-Type": "application/json"},
        ),
        await client.post(
            "/jobs", params=query, content=image, headers={"Content-Type": "image/jpeg"}
        ),
        await client.post(
            "/jobs",
            params={"wait": "30"},
            data={k: v for k, v in query.items() if k != "wait"},
            files={"image": ("e.jpg", image, "image/jpeg")},
        ),
    ]
    for response in answers:
        assert response.status_code == 201, response.text
        view = response.json()
        assert view["status"] == "completed"
        assert (view["result_width"], view["result_height"]) == (
            100,
            56,
        )  # 1920x1080 in a 100x100 box
        assert response.headers["Location"] == f"/jobs/{view['id']}"
    failed = await client.post(
        "/jobs",
        params={"wait": "30"},
        content=job_body(BAD / "handmade__Storm_first_half.jpg"),
        headers={"Content-Type": "application/json"},
    )
    assert failed.status_code == 201
    assert failed.json()["error"]["code"] == "truncated_image"


async def test_submit_with_a_wait_too_short_answers_the_usual_202(
    client: httpx.AsyncClient,
) -> None:
    await submit_slow(client)  # the only worker is busy for a good second
    response = await client.post(
        "/jobs",
        params={"wait": "0.2"},
        content=job_body(PHOTO),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    bad = await client.post("/jobs", params={"wait": "61"}, content=job_body(PHOTO))
    assert bad.status_code == 400
    assert "wait" in bad.json()["error"]

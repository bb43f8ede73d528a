"""Kill -9 under load, several times over: every accepted job still ends, its output is
whole, no temporary or orphan file is left, and the database is intact."""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio
from PIL import Image

from tests.conftest import GOOD
from tests.servers import ServerProcess, job_body, make_settings, wait_done

IMAGES = [GOOD / "mate__Storm.jpg", GOOD / "skimage__astronaut.png", GOOD / "mate__Elephants.jpg"]
KILLS = 4
SUBMITTERS = 3
MAX_SUBMITS = 150  # per submitter and round: the loop is bounded even if nothing stops it


@pytest.mark.slow
# httpx's request generator is dropped when the server dies mid-upload: that is the point.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object ByteStream.__aiter__"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_repeated_sigkill_under_load_loses_no_accepted_job(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"random seed {seed}")  # to replay a failure
    settings = make_settings(tmp_path, worker_pool_size=2, queue_size=10_000)
    accepted: dict[str, tuple[str, int, int]] = {}

    async def submit_until_the_server_dies(client: httpx.AsyncClient) -> None:
        for _ in range(MAX_SUBMITS):
            operation = rng.choice(["resize", "thumbnail"])
            width, height = rng.randint(16, 400), rng.randint(16, 400)
            body = job_body(rng.choice(IMAGES), operation, width, height)
            try:
                response = await client.post(
                    "/jobs", content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.TransportError:
                return
            assert response.status_code == 202, response.text
            accepted[response.json()["job_id"]] = (operation, width, height)

    async with trio.open_nursery() as nursery:
        for _ in range(KILLS):
            server = ServerProcess(settings)
            url = await server.start(nursery)
            async with (
                httpx.AsyncClient(base_url=url, timeout=30) as client,
                trio.open_nursery() as load,
            ):
                for _ in range(SUBMITTERS):
                    load.start_soon(submit_until_the_server_dies, client)
                await trio.sleep(rng.uniform(0.3, 2.0))
                server.signal(signal.SIGKILL)
            assert await server.wait() == -signal.SIGKILL
        server = ServerProcess(settings)
        url = await server.start(nursery)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert len(accepted) > 20
            for job_id, (operation, width, height) in accepted.items():
                job = await wait_done(client, job_id, timeout_s=300)
                assert job["status"] == "completed", job.get("error")
                response = await client.get(f"/jobs/{job_id}/download")
                assert response.status_code == 200
                with Image.open(io.BytesIO(response.content)) as image:
                    image.load()
                    assert image.size == (job["result_width"], job["result_height"])
                if operation == "resize":
                    assert image.size == (width, height)
                else:
                    assert image.width <= width
                    assert image.height <= height
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0

    names = {p.name for d in (settings.upload_dir, settings.output_dir) for p in d.iterdir()}
    assert [n for n in names if n.endswith(".tmp")] == []
    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        statuses = {row[0] for row in conn.execute("SELECT DISTINCT status FROM jobs")}
    assert set(accepted) <= rows
    assert statuses == {"completed"}
    # Every stored file belongs to a job (orphans of killed submits were cleaned up).
    owners = {n.partition(".")[0] for n in names if not n.startswith(".")}
    assert owners <= rows

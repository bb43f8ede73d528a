"""Faults in real worker processes and on the wire: memory, crashes, time-outs, slow
clients, a full disk. Each fails only its own job (or request); the server goes on."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple, Unpack

import httpx
import pytest
import trio
from PIL import Image

from app.queue import JobQueue
from app.runner import ProcessRunner, Slot
from app.server import UPLOAD_MAX_WAIT_S, UPLOAD_PLACES
from app.store import open_job_store
from app.workers import WorkerPool
from tests import procs
from tests.conftest import GOOD
from tests.fakes import FakeStorage, record
from tests.servers import make_settings, open_server, submit, submit_slow, wait_done

CAMERA = GOOD / "skimage__camera.png"
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def huge_png(path: Path) -> Path:
    """48 megapixels that compress to 150 kB: cheap to send, dear to decode."""
    Image.new("RGB", (8000, 6000), "red").save(path)
    return path


async def test_a_worker_out_of_memory_fails_its_job_and_the_next_job_runs(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, worker_pool_size=1, worker_memory_bytes=300 * 1024 * 1024)
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
    ):
        hog = await submit(
            client, huge_png(tmp_path / "big.png"), width=4000, height=4000, output_format="png"
        )
        after = await submit(client, CAMERA, width=32, height=32)
        job = await wait_done(client, hog)
        assert job["status"] == "failed"
        assert job["error"]["code"] == "out_of_memory"
        assert (await wait_done(client, after))["status"] == "completed"


async def test_a_job_over_the_timeout_is_killed_and_the_next_job_runs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_pool_size=1, job_timeout_s=0.3)
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
    ):
        slow = await submit_slow(client)
        after = await submit(client, CAMERA, width=32, height=32)
        job = await wait_done(client, slow)
        assert job["status"] == "failed"
        assert job["error"]["code"] == "timeout"
        assert "0.3 s" in job["error"]["message"]
        assert (await wait_done(client, after))["status"] == "completed"
        assert list(settings.output_dir.glob(".*.tmp")) == []


class CrashingRunner(ProcessRunner):
    """A real process runner whose worker process crashes for chosen jobs."""

    def __init__(self, size: int, crash_when: Callable[[str], bool]) -> None:
        super().__init__(size)
        self.crash_when = crash_when

    @asynccontextmanager
    async def reserve(self) -> AsyncIterator[Slot]:
        async with super().reserve() as slot:
            yield CrashingSlot(slot, self.crash_when)


class CrashingSlot:
    def __init__(self, slot: Slot, crash_when: Callable[[str], bool]) -> None:
        self.slot = slot
        self.crash_when = crash_when

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        if self.crash_when(repr(args)):
            await self.slot.run(procs.crash)
        return await self.slot.run(fn, *args)


async def test_a_crashed_worker_fails_only_its_job_and_is_replaced(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_pool_size=1)
    storage_root = tmp_path / "uploads"
    storage_root.mkdir()
    async with open_job_store(settings.db_path) as store, trio.open_nursery() as nursery:
        storage = FakeStorage()
        queue = JobQueue(10)
        runner = CrashingRunner(1, crash_when=lambda source: "doomed" in source)
        pool = WorkerPool(settings, store, storage, queue, runner)
        await nursery.start(pool.serve)
        for job_id in ("doomed", "fine"):
            await store.insert(record(job_id, input_key=f"uploads/{job_id}.png"))
            with queue.reserve_nowait(job_id) as slot:
                slot.put()
        with trio.fail_after(30):
            while await store.count("pending") + await store.count("processing"):
                await trio.sleep(0.05)
        pool.stop()
    doomed, fine = await _rows(settings.db_path, "doomed", "fine")
    assert (doomed.status, doomed.error_code) == ("failed", "worker_crashed")
    # The next job got a fresh worker process (it fails only because FakeStorage has no
    # files: the point is that it ran, in a process, after the crash).
    assert fine.status == "failed"
    assert fine.error_code != "worker_crashed"


async def _rows(db: Path, *ids: str) -> list[Any]:
    async with open_job_store(db) as store:
        return [await store.get(job_id) for job_id in ids]


async def test_a_slow_client_cannot_hold_a_request_forever(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, body_timeout_s=1.0)
    async with open_server(settings) as server:
        host, port = server.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(
                b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"image_data": "'
            )
            answer = b""
            with trio.fail_after(15):
                while b"\r\n" not in answer:
                    chunk = await stream.receive_some()
                    if not chunk:
                        break
                    answer += chunk
        # Answered (408/400) or disconnected: either way the connection was not held.
        assert answer == b"" or answer.split(b" ")[1] in (b"408", b"400"), answer


async def test_stalled_uploads_do_not_hold_other_uploads_back(tmp_path: Path) -> None:
    # More stalled uploads than the upload gate has places: each gives its place up once
    # it pauses, long before any waiting upload would be let through anyway.
    data = CAMERA.read_bytes()
    head = (
        b"POST /jobs?operation=resize&width=10&height=10 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(data)
    )
    async with open_server(make_settings(tmp_path, body_timeout_s=30.0)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        stalled = []
        for _ in range(UPLOAD_PLACES + 1):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(head + data[: len(data) // 2])
            stalled.append(stream)
        async with httpx.AsyncClient(base_url=server.url) as client:
            with trio.fail_after(UPLOAD_MAX_WAIT_S * 0.75):
                job_id = await submit(client, CAMERA, width=10, height=10)
            assert (await wait_done(client, job_id))["status"] == "completed"
        for stream in stalled:
            await stream.aclose()


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    if os.geteuid() != 0:
        pytest.skip(reason="mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


async def test_a_full_disk_answers_507_fails_running_jobs_and_recovers(
    tmp_path: Path, small_disk: Path
) -> None:
    settings = make_settings(
        tmp_path,
        upload_dir=small_disk / "uploads",
        output_dir=small_disk / "outputs",
        worker_pool_size=1,
    )
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
    ):
        # Room for the small input, not for its big output.
        filler = small_disk / "filler"
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(bytes(free - 400 * 1024))
        job_id = await submit(client, CAMERA, width=3000, height=3000, output_format="png")
        job = await wait_done(client, job_id)
        assert job["status"] == "failed"
        assert job["error"]["code"] == "storage_full"
        # No room for the input either: refused at submit, nothing half-written.
        response = await client.post(
            "/jobs?operation=resize&width=10&height=10",
            content=(GOOD / "mate__Elephants.jpg").read_bytes(),
            headers={"Content-Type": "image/jpeg"},
        )
        assert response.status_code == 507, response.text
        assert response.json()["code"] == "storage_full"
        assert "space" in response.json()["error"]
        assert [p.name for p in (small_disk / "uploads").iterdir() if p.name.endswith(".tmp")] == []
        assert [
            p.name for p in (small_disk / "outputs").iterdir() if not p.name.startswith(".")
        ] == []
        # Space comes back: so does the service.
        filler.unlink()
        again = await submit(client, CAMERA, width=300, height=300, output_format="png")
        done = await wait_done(client, again)
        assert done["status"] == "completed"
        response = await client.get(f"/jobs/{again}/download")
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.size == (300, 300)

"""Whole server processes: graceful SIGTERM, SIGKILL and restart, shared databases,
the hypercorn command line, and configuration errors."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import GOOD
from tests.servers import ROOT, ServerProcess, environment, make_settings, submit, wait_done

BIG = GOOD / "mate__Elephants_5640x3172.jpg"  # about half a second of work per job
SMALL = GOOD / "mate__Elephants.jpg"


def any_alive(pids: list[int]) -> bool:
    return any(os.path.exists(f"/proc/{pid}") for pid in pids)


def statuses(db: Path) -> Counter[str]:
    with sqlite3.connect(db) as conn:
        return Counter(status for (status,) in conn.execute("SELECT status FROM jobs"))


async def test_sigterm_finishes_running_jobs_and_keeps_queued_ones_for_the_next_start(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, worker_pool_size=1)
    async with trio.open_nursery() as nursery:
        server = ServerProcess(settings)
        url = await server.start(nursery)
        async with httpx.AsyncClient(base_url=url) as client:
            ids = [await submit(client, BIG, width=800, height=600) for _ in range(8)]
        await server.wait_for("job.started")
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        started = len(server.logged("job.started"))
        counts = statuses(settings.db_path)
        # Every job that had started finished; the others wait for the next start.
        assert counts == {"completed": started, "pending": 8 - started}, counts
        assert started < 8
        # The next start runs what was left.
        server = ServerProcess(settings)
        url = await server.start(nursery)
        async with httpx.AsyncClient(base_url=url) as client:
            for job_id in ids:
                assert (await wait_done(client, job_id))["status"] == "completed"
            server.signal(signal.SIGINT)
            assert await server.wait() == 0


async def test_a_server_killed_mid_load_loses_no_accepted_job(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_pool_size=2)
    async with trio.open_nursery() as nursery:
        server = ServerProcess(settings)
        url = await server.start(nursery)
        async with httpx.AsyncClient(base_url=url) as client:
            ids = [
                await submit(client, BIG, operation="thumbnail", width=300, height=300)
                for _ in range(8)
            ]
            await server.wait_for("job.finished")
            workers = server.children()
            assert workers
            server.signal(signal.SIGKILL)
            assert await server.wait() == -signal.SIGKILL
        # Its worker processes do not outlive it (and so write nothing after a restart).
        with trio.fail_after(10):
            while any_alive(workers):
                await trio.sleep(0.05)
        assert statuses(settings.db_path)["processing"] >= 1
        server = ServerProcess(settings)
        url = await server.start(nursery)
        assert server.logged("service.started")[0]["requeued_jobs"] >= 1
        async with httpx.AsyncClient(base_url=url) as client:
            for job_id in ids:
                job = await wait_done(client, job_id)
                assert job["status"] == "completed", job
                assert (job["result_width"], job["result_height"]) == (300, 169)
            server.signal(signal.SIGTERM)
            assert await server.wait() == 0
    leftovers = [p.name for p in settings.output_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


async def test_two_servers_on_one_database_never_run_a_job_twice(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_pool_size=1)
    async with trio.open_nursery() as nursery:
        servers = [ServerProcess(settings), ServerProcess(settings)]
        urls = [await server.start(nursery) for server in servers]
        ids: list[str] = []
        async with httpx.AsyncClient() as client:
            for number in range(16):
                client.base_url = httpx.URL(urls[number % 2])
                ids.append(await submit(client, SMALL, width=64, height=64))
            for job_id in ids:
                client.base_url = httpx.URL(urls[0])
                assert (await wait_done(client, job_id))["status"] == "completed"
        for server in servers:
            server.signal(signal.SIGTERM)
            assert await server.wait() == 0
    started = Counter(
        event["job_id"]
        for server in servers
        for event in server.events
        if event.get("event") == "job.started"
    )
    assert set(started) == set(ids)
    assert set(started.values()) == {1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_hypercorn_command_line_serves_the_app_factory(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "hypercorn",
        "-k",
        "trio",
        "--bind",
        f"127.0.0.1:{port}",
        "app:create_app()",
    ]
    async with trio.open_nursery() as nursery:
        server = ServerProcess(settings, command=command)
        await server.start(nursery, ready="service.started")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await server.wait_for(
                "Running on http://127.0.0.1:" + str(port) + " (CTRL + C to quit)"
            )
            health = await client.get("/health")
            assert health.json()["status"] == "healthy"
            job_id = await submit(client, SMALL, width=32, height=32)
            assert (await wait_done(client, job_id))["status"] == "completed"
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_POOL_SIZE", "many"),
        ("PORT", "70000"),
        ("JOB_TIMEOUT", "-1"),
        ("MAX_UPLOAD_SIZE", "0"),
        ("LOG_LEVEL", "chatty"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = environment(make_settings(tmp_path)) | {variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


async def test_several_front_processes_on_one_port_share_the_work(tmp_path: Path) -> None:
    """`hypercorn --workers 2`: two event loops behind one port (the kernel spreads the
    connections), each with its own worker pool, on one database: every job runs once,
    both processes take jobs, and a long-poll answered by the other process still ends."""
    settings = make_settings(tmp_path, worker_pool_size=1)
    port = free_port()
    command = [
        *(sys.executable, "-m", "hypercorn", "-k", "trio", "--workers", "2"),
        *("--bind", f"127.0.0.1:{port}", "app:create_app()"),
    ]
    async with trio.open_nursery() as nursery:
        server = ServerProcess(settings, command=command)
        await server.start(nursery, ready="service.started")
        await server.wait_for("service.started")  # the second front process
        url = f"http://127.0.0.1:{port}"
        ids: list[str] = []
        for _ in range(24):  # a connection each: the kernel picks the process
            async with httpx.AsyncClient(base_url=url) as client:
                ids.append(await submit(client, SMALL, width=64, height=64))
        async with httpx.AsyncClient(base_url=url) as client:
            for job_id in ids:
                assert (await wait_done(client, job_id))["status"] == "completed"
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    started = Counter(e["job_id"] for e in server.logged("job.started"))
    assert set(started) == set(ids)
    assert set(started.values()) == {1}
    assert len({e["process"] for e in server.logged("job.started")}) == 2, "one did all"

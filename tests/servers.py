"""Real servers for end-to-end tests: hypercorn in this process, or `python -m app`."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec
import trio
from hypercorn.trio import serve as hypercorn_serve

from app.application import ImgJobsApp
from app.server import create_app, hypercorn_config
from app.settings import Settings
from tests.backends import shared_overrides
from tests.conftest import GOOD

ROOT = Path(__file__).resolve().parents[1]


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings for a test server: everything under `tmp`, loopback, a free port."""
    values: dict[str, Any] = {
        "port": 0,
        "host": "127.0.0.1",
        "db_path": tmp / "data" / "jobs.db",
        "upload_dir": tmp / "uploads",
        "output_dir": tmp / "outputs",
        "worker_pool_size": 2,
        "max_upload_bytes": 32 * 1024 * 1024,
        "shutdown_grace_s": 10.0,
        **shared_overrides(tmp),
    }
    values.update(overrides)
    return Settings(**values)


def environment(settings: Settings) -> dict[str, str]:
    """The environment variables that configure a server process like `settings`."""
    from app.settings import ENVIRONMENT

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    for variable, field in ENVIRONMENT.items():
        value = getattr(settings, field)
        if isinstance(value, frozenset):
            env[variable] = ",".join(sorted(value))
        elif value is not None:
            env[variable] = str(value)
    return env


@contextmanager
def fuzz_client(settings: Settings) -> Iterator[httpx.Client]:
    """A blocking client of one `python -m app` process (as `make run` starts it), for
    hypothesis tests, which are synchronous; a fresh connection per request, so that no
    request races the server closing an idle one."""
    server = subprocess.Popen(
        [sys.executable, "-m", "app"],
        env=environment(settings),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if '"server.listening"' in line:
                url = json.loads(line)["urls"][0]
                break
        else:
            raise AssertionError("the server did not start")
        threading.Thread(target=server.stderr.read, daemon=True).start()  # keep draining
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=url, timeout=30, limits=no_reuse) as client:
            yield client
    finally:
        server.terminate()
        server.wait(timeout=60)
        if server.stderr is not None:
            server.stderr.close()


class RunningServer(NamedTuple):
    url: str
    app: ImgJobsApp


@asynccontextmanager
async def open_server(settings: Settings) -> AsyncIterator[RunningServer]:
    """Serve the app with hypercorn on trio in this process (bound to a free port)."""
    app = create_app(settings)
    config = hypercorn_config(settings)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=shutdown.wait)
        )
        try:
            yield RunningServer(urls[0], app)
        finally:
            shutdown.set()


class ServerProcess:
    """`python -m app` in a child process, the way `make run` starts it."""

    def __init__(
        self,
        settings: Settings,
        *,
        extra_env: Mapping[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.command = command or [sys.executable, "-m", "app"]
        self.env = environment(settings) | dict(extra_env or {})
        self.process: trio.Process | None = None
        self.url = ""
        self.events: list[dict[str, Any]] = []
        self._lines: trio.MemoryReceiveChannel[dict[str, Any]] | None = None

    async def start(self, nursery: trio.Nursery, *, ready: str = "server.listening") -> str:
        """Start the server and wait for its `ready` event; returns its URL if it logs one."""
        send, receive = trio.open_memory_channel[dict[str, Any]](10_000)
        self._lines = receive
        self.process = await nursery.start(
            lambda task_status: trio.run_process(
                self.command,
                env=self.env,
                cwd=ROOT,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                check=False,
                task_status=task_status,
            )
        )
        assert self.process is not None
        assert self.process.stderr is not None
        nursery.start_soon(self._read_stderr, self.process.stderr, send)
        event = await self.wait_for(ready)
        self.url = event.get("urls", [""])[0]
        return self.url

    async def _read_stderr(
        self, stream: trio.abc.ReceiveStream, send: trio.MemorySendChannel[dict[str, Any]]
    ) -> None:
        buffer = b""
        async with send:
            async for chunk in stream:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        event = {"event": "stderr", "text": line.decode(errors="replace")}
                    self.events.append(event)
                    send.send_nowait(event)

    def logged(self, name: str) -> list[dict[str, Any]]:
        """Every `name` event the server has logged so far."""
        return [event for event in self.events if event.get("event") == name]

    async def wait_for(self, name: str, *, timeout_s: float = 60) -> dict[str, Any]:
        """The next `name` event the server logs (or fail, showing its last lines)."""
        assert self._lines is not None
        with trio.move_on_after(timeout_s):
            async for event in self._lines:
                if event.get("event") == name:
                    return event
        raise AssertionError(f"no {name} event from the server; last: {self.events[-8:]}")

    def children(self) -> list[int]:
        """Pids of the server's child processes (its image workers)."""
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task")
        return [
            int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()
        ]

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()


def encode_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def job_body(
    image: Path | bytes,
    operation: str = "resize",
    width: int = 200,
    height: int = 200,
    **extra: Any,
) -> bytes:
    data = image if isinstance(image, bytes) else image.read_bytes()
    body = {
        "image_data": base64.b64encode(data).decode(),
        "operation": operation,
        "width": width,
        "height": height,
        **extra,
    }
    return msgspec.json.encode(body)


async def submit(client: httpx.AsyncClient, image: Path | bytes, **params: Any) -> str:
    response = await client.post(
        "/jobs", content=job_body(image, **params), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def submit_slow(client: httpx.AsyncClient) -> str:
    """A job that keeps a worker busy for a good second (a 5120x2880 PNG to a big PNG)."""
    return await submit(
        client, GOOD / "plasma__Patak__5120x2880.png", width=4000, height=2000, output_format="png"
    )


async def wait_started(client: httpx.AsyncClient, job_id: str, *, timeout_s: float = 60) -> Any:
    """Wait until a worker has taken the job (it is no longer pending); returns its JSON."""
    with trio.fail_after(timeout_s):
        while True:
            job = (await client.get(f"/jobs/{job_id}")).json()
            if job["status"] != "pending":
                return job
            await trio.sleep(0.005)


async def wait_done(client: httpx.AsyncClient, job_id: str, *, timeout_s: float = 60) -> Any:
    """Poll until the job is completed or failed; returns its JSON."""
    with trio.fail_after(timeout_s):
        delay = 0.01
        while True:
            job = (await client.get(f"/jobs/{job_id}")).json()
            if job["status"] in ("completed", "failed"):
                return job
            await trio.sleep(delay)
            delay = min(delay * 2, 0.2)

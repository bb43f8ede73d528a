"""A real imgjobs server for a benchmark: ``python -m app`` in a child process, as ``make run``.

Each server gets fresh temporary folders (database, uploads, outputs), binds a free port on
127.0.0.1 and is ready when it logs ``server.listening`` (a handshake, never a sleep). Its
JSON log lines are kept, so a benchmark can read ``job.started`` (``queue_wait_ms``) and
``job.finished`` (``processing_ms``) of its own jobs. Leaving the block sends SIGTERM and
waits for a clean exit.

The server runs this checkout's ``app`` unless told otherwise: ``ServerConfig.app_root``,
else the ``BENCH_APP_ROOT`` environment variable, names another source tree (e.g. a
``git worktree`` of an older commit), which becomes the server's working directory and the
first ``PYTHONPATH`` entry, so its ``app`` and ``imaging`` are imported instead of this
checkout's, with this checkout's virtualenv and bench code. ``AppTree`` ("label=path") is
how a benchmark that compares source trees takes them on its command line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from bench.procs import children

__all__ = [
    "APP_ROOT_VARIABLE",
    "AppTree",
    "RunningServer",
    "ServerConfig",
    "ServerError",
    "app_root",
    "open_server",
    "parse_app_tree",
]

ROOT = Path(__file__).resolve().parents[1]
APP_ROOT_VARIABLE = "BENCH_APP_ROOT"
# How long a server may take to import, open its database and bind (generous: shared box).
START_DEADLINE_S = 60.0
# SIGTERM drains in-flight jobs; a benchmark stops an idle server, so this is plenty.
STOP_DEADLINE_S = 40.0
MAX_KEPT_LINES = 200_000


class ServerError(Exception):
    """The server did not start, or did not stop cleanly; the message has its last lines."""


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What a benchmark varies; everything else is the service's default."""

    pool_size: int
    queue_size: int = 10_000
    max_upload_bytes: int = 32 * 1024 * 1024
    log_level: str = "INFO"
    python: str = sys.executable
    extra_env: dict[str, str] = msgspec.field(default_factory=dict)
    # The source tree to serve; "" means $BENCH_APP_ROOT, or this checkout without it.
    app_root: str = ""


class AppTree(msgspec.Struct, frozen=True):
    """A source tree a benchmark runs the server from, and its label in the tables."""

    label: str
    root: str


def parse_app_tree(text: str) -> AppTree:
    """``label=path`` or a bare ``path`` (labelled by its folder name), for ``argparse``."""
    label, sep, path = text.partition("=")
    if not sep:
        label, path = Path(text).resolve().name, text
    root = Path(path).resolve()
    if not label or not (root / "app" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: expected label=path to an imgjobs tree")
    return AppTree(label, str(root))


def app_root(config: ServerConfig) -> Path:
    """The tree ``config`` serves: ``app_root``, else ``$BENCH_APP_ROOT``, else this checkout."""
    chosen = config.app_root or os.environ.get(APP_ROOT_VARIABLE, "")
    root = Path(chosen).resolve() if chosen else ROOT
    if not (root / "app" / "__main__.py").is_file():
        raise ServerError(f"{root} is not an imgjobs source tree (no app/__main__.py)")
    return root


class RunningServer:
    """A started server: its URL, its pid, and every JSON line it has logged so far."""

    def __init__(self, process: trio.Process, folder: Path) -> None:
        self.process = process
        self.folder = folder
        self.url = ""
        self.events: list[dict[str, Any]] = []
        self.exit_code: int | None = None
        self._listening = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    def logged(self, name: str) -> list[dict[str, Any]]:
        """Every ``name`` event logged so far, e.g. ``job.finished``."""
        return [event for event in self.events if event.get("event") == name]

    def last_lines(self, count: int = 8) -> str:
        return "\n".join(json.dumps(event) for event in self.events[-count:])

    async def serve_log_reader(self) -> None:
        """Read the server's stderr until it closes, keeping each line as an event."""
        stream = self.process.stderr
        assert stream is not None
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._keep(line)
        if buffer:
            self._keep(buffer)

    def _keep(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = {"event": "stderr", "text": line.decode(errors="replace")}
        if not isinstance(event, dict):
            event = {"event": "stderr", "text": str(event)}
        if len(self.events) < MAX_KEPT_LINES:
            self.events.append(event)
        if event.get("event") == "server.listening" and not self._listening.is_set():
            urls = event.get("urls") or [""]
            self.url = str(urls[0])
            self._listening.set()

    async def wait_listening(self) -> str:
        await self._listening.wait()
        return self.url


def environment(config: ServerConfig, folder: Path, root: Path = ROOT) -> dict[str, str]:
    """The variables ``make run`` would read, all paths under ``folder``; ``root``'s modules
    come first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    path = [str(root), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        PORT="0",
        HOST="127.0.0.1",
        DB_PATH=str(folder / "data" / "jobs.db"),
        UPLOAD_DIR=str(folder / "uploads"),
        OUTPUT_DIR=str(folder / "outputs"),
        WORKER_POOL_SIZE=str(config.pool_size),
        MAX_UPLOAD_SIZE=str(config.max_upload_bytes),
        QUEUE_SIZE=str(config.queue_size),
        LOG_LEVEL=config.log_level,
        PYTHONUNBUFFERED="1",
    )
    env.update(config.extra_env)
    return env


@asynccontextmanager
async def open_server(config: ServerConfig) -> AsyncIterator[RunningServer]:
    """Start a fresh server, yield it once it listens, then stop it with SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="imgjobs-bench-") as scratch:
        folder = Path(scratch)
        root = app_root(config)
        command = [config.python, "-m", "app"]
        async with trio.open_nursery() as nursery:
            process = await trio.lowlevel.open_process(
                command,
                env=environment(config, folder, root),
                cwd=str(root),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            server = RunningServer(process, folder)
            nursery.start_soon(server.serve_log_reader)
            try:
                await _wait_started(server)
                yield server
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(server)


async def _wait_started(server: RunningServer) -> None:
    async def watch_exit(cancel_scope: trio.CancelScope) -> None:
        await server.process.wait()
        cancel_scope.cancel()

    with trio.move_on_after(START_DEADLINE_S) as deadline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_exit, nursery.cancel_scope)
            await server.wait_listening()
            nursery.cancel_scope.cancel()
    if not server.url:
        why = "timed out" if deadline.cancelled_caught else f"exited {server.process.returncode}"
        raise ServerError(
            f"the server never logged server.listening ({why}):\n{server.last_lines()}"
        )


async def _stop(server: RunningServer) -> None:
    """SIGTERM, then wait; SIGKILL the server and its workers if it does not exit in time."""
    process = server.process
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_DEADLINE_S) as deadline:
        server.exit_code = await process.wait()
    if deadline.cancelled_caught:
        for pid in children(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        process.kill()
        server.exit_code = await process.wait()
        raise ServerError(f"the server ignored SIGTERM for {STOP_DEADLINE_S:g} s; killed")

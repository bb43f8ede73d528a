"""The floor server of ``bench.floor``: the service's two job routes with handlers that do
nothing but read the body and answer, under hypercorn's trio worker with the real server's
settings (``app.server.hypercorn_config``, 256 KiB reads).

``POST /jobs`` takes the service's three upload forms and does with each only what any
server must to get the image out of it, then throws it away: a raw body is read to its
end; a ``multipart/form-data`` body is parsed by Quart (``request.files`` and
``request.form``, as ``app.routes`` reads it) and the ``image`` part's bytes taken; an
``application/json`` body is read whole and decoded by msgspec into a Struct whose
``image_data`` is ``bytes`` (which decodes the base64 as it parses, as ``app.submissions``
does).

Run by ``bench.floor`` as a child process (``python -m bench.floor_server``): it prints its
URL on one line once it listens on a free port of 127.0.0.1, and stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import hypercorn.trio
import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio

from app.models import JobSubmitted, JobView, SubmitRequest
from app.routes import json_response
from app.server import hypercorn_config, read_uploads_in_bigger_chunks
from app.settings import Settings
from bench.procs import stop_process

__all__ = ["FloorError", "FloorServer", "create_floor_app", "open_floor_server", "serve_floor"]

ROOT = Path(__file__).resolve().parents[1]
# As bench.server's MAX_UPLOAD_SIZE: room for the 16 MB corpus image and then some.
MAX_BODY_BYTES = 32 * 1024 * 1024
START_DEADLINE_S = 60.0
# Past hypercorn's graceful_timeout (SHUTDOWN_GRACE, 30 s), though an idle server stops at once.
STOP_DEADLINE_S = 40.0


class FloorError(Exception):
    """The floor server did not start, or answered a job other than as it always does."""


class UploadBody(SubmitRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The seed's JSON body with its image decoded while msgspec parses it."""

    image_data: bytes  # type: ignore[assignment]  # the same JSON string, decoded


def create_floor_app() -> QuartTrio:
    """The service's job routes with handlers that do nothing but read and answer."""
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # As create_app() sets them, so Quart does the same per-request work.
    app.config["BODY_TIMEOUT"] = Settings().body_timeout_s
    app.config["RESPONSE_TIMEOUT"] = 60

    @app.post("/jobs")
    async def submit_job() -> Response:
        if request.mimetype == "multipart/form-data":
            received = await _multipart_image_bytes()
        elif request.mimetype == "application/json":
            received = await _json_image_bytes()
        else:
            received = await _raw_body_bytes()
        if received is None:
            return Response(b"", status=400)
        job_id = str(uuid.uuid4())
        return json_response(
            JobSubmitted(job_id=job_id), 202, headers={"Location": f"/jobs/{job_id}"}
        )

    @app.get("/jobs/<job_id>")
    async def get_job(job_id: str) -> Response:
        now = datetime.datetime.now(datetime.UTC)
        view = JobView(
            id=job_id,
            status="completed",
            input_path=f"uploads/{job_id}.jpg",
            output_path=f"outputs/{job_id}.jpg",
            operation="resize",
            width=200,
            height=200,
            output_format="jpeg",
            created_at=now,
            updated_at=now,
            result_width=200,
            result_height=113,
            result_bytes=9_000,
        )
        return json_response(view)

    return app


async def _raw_body_bytes() -> int | None:
    """Read the body to its end, keeping nothing; None if it was cut short."""
    received = 0
    async for chunk in request.body:
        received += len(chunk)
    return received if received == request.content_length else None


async def _multipart_image_bytes() -> int | None:
    """The ``image`` part's size once Quart has parsed the form; None without one."""
    files = await request.files
    form = await request.form
    part = files.get("image")
    if part is None:
        return None
    form.to_dict()  # as app.routes hands the fields on
    return len(part.read())


async def _json_image_bytes() -> int | None:
    """The decoded image's size once msgspec has parsed the body; None if it is invalid."""
    body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    try:
        upload = msgspec.json.decode(body, type=UploadBody)
    except msgspec.DecodeError:  # ValidationError included
        return None
    return len(upload.image_data)


async def serve_floor(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the floor app on 127.0.0.1 until SIGINT/SIGTERM; reports the bound URL."""
    read_uploads_in_bigger_chunks()
    config = hypercorn_config(Settings(host="127.0.0.1", port=0))
    # Open before hypercorn starts: it runs the shutdown trigger only after reporting its
    # binds, and a SIGTERM in between would otherwise kill the process mid-way.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def first_signal() -> None:
            async for _ in signals:
                return

        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                partial(
                    hypercorn.trio.serve, create_floor_app(), config, shutdown_trigger=first_signal
                )
            )
            task_status.started(urls[0])


async def _serve_and_announce() -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_floor)
        # The handshake open_floor_server waits for: one line, the URL.
        print(url, flush=True)


class FloorServer:
    """A running ``python -m bench.floor_server``: its URL, its pid, and how it exited."""

    def __init__(self, process: trio.Process, url: str) -> None:
        self.process = process
        self.url = url
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


@asynccontextmanager
async def open_floor_server() -> AsyncIterator[FloorServer]:
    """Start the floor server, yield it once it reported its URL, then stop it with SIGTERM."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench.floor_server"],
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    server = FloorServer(process, "")
    try:
        with trio.fail_after(START_DEADLINE_S):
            server.url = await _read_line(process)
        yield server
    finally:
        server.exit_code = await stop_process(process, signal.SIGTERM, deadline_s=STOP_DEADLINE_S)
        if process.stdout is not None:
            with trio.CancelScope(shield=True):
                await process.stdout.aclose()


async def _read_line(process: trio.Process) -> str:
    assert process.stdout is not None
    buffer = b""
    while b"\n" not in buffer:
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise FloorError(f"the floor server exited {await process.wait()} before listening")
        buffer += chunk
    return buffer.partition(b"\n")[0].decode().strip()


if __name__ == "__main__":
    trio.run(_serve_and_announce)

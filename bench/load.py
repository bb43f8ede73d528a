"""Load on a running imgjobs server: N concurrent jobs over real HTTP, and probes meanwhile.

Each job is one task: ``POST /jobs`` (JSON with base64, a raw ``image/*`` body, or a
multipart form), then ``GET /jobs/{id}?wait=30`` until the job is completed or failed
(long-poll, never a tight loop), and with ``download=True`` then ``GET /jobs/{id}/download``
on the same connection, the whole body read, before the job counts as done (what a user
does; an image server's one GET returns the image). Alongside, ``serve_probes`` calls
``GET /health`` and ``GET /jobs/{id}`` every ~50 ms to see how the API answers under that
load, and
``serve_submit_probes`` uploads a 1 MB JPEG every 500 ms (then deletes the job) once all the
batch's POSTs are answered: the submit latency under full load, apart from the burst's own.
Probes and jobs (but multipart forms) use ``bench.http.LeanConnection``: httpx would cost
this process, on the same cores as the server, a few ms of CPU per request.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
import msgspec
import trio

from bench.http import LeanConnection, LeanResponse
from bench.workloads import Workload

__all__ = [
    "BatchResult",
    "JobResult",
    "Payload",
    "Probes",
    "Upload",
    "make_payload",
    "open_client",
    "run_batch",
    "serve_probes",
    "serve_submit_probes",
]

Upload = Literal["json", "raw", "multipart"]
TERMINAL = frozenset({"completed", "failed"})
LONG_POLL_S = 30
# A job is given up after this many long-polls (30 s each): bounded even if a job hangs.
MAX_POLLS = 20
PROBE_INTERVAL_S = 0.05
SUBMIT_PROBE_INTERVAL_S = 0.5
MAX_PROBES = 50_000
# What a lean request can raise: connection trouble, or an answer it cannot parse.
LEAN_ERRORS = (OSError, trio.BrokenResourceError, ValueError)
_MEDIA_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg"}


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """A ready-to-send ``POST /jobs`` (encoded once, sent N times)."""

    upload: Upload
    content: bytes
    media_type: str
    fields: dict[str, str]

    def request(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.AsyncClient.post``."""
        if self.upload == "json":
            return {"content": self.content, "headers": {"Content-Type": "application/json"}}
        if self.upload == "raw":
            return {
                "content": self.content,
                "params": self.fields,
                "headers": {"Content-Type": self.media_type},
            }
        return {
            "files": {"image": ("upload", self.content, self.media_type)},
            "data": self.fields,
        }


def make_payload(
    workload: Workload, data: bytes, upload: Upload, output_format: str | None = None
) -> Payload:
    media_type = next(
        (kind for magic, kind in _MEDIA_TYPES.items() if data.startswith(magic)),
        "application/octet-stream",
    )
    fields = {
        "operation": workload.operation,
        "width": str(workload.width),
        "height": str(workload.height),
    }
    if output_format is not None:
        fields["output_format"] = output_format
    if upload == "json":
        body: dict[str, Any] = {
            "image_data": base64.b64encode(data).decode("ascii"),
            "operation": workload.operation,
            "width": workload.width,
            "height": workload.height,
        }
        if output_format is not None:
            body["output_format"] = output_format
        content = msgspec.json.encode(body)
    else:
        content = data
    return Payload(upload=upload, content=content, media_type=media_type, fields=fields)


class JobResult(msgspec.Struct, frozen=True, kw_only=True):
    """One job as the client saw it; times in ms, ``done_s`` from the batch's start."""

    job_id: str
    status: str
    submit_ms: float
    e2e_ms: float
    done_s: float
    error: str = ""
    result_width: int | None = None
    result_height: int | None = None
    dropped_polls: int = 0  # long-polls the server closed without an answer
    downloaded_bytes: int = 0  # the result's body, when the batch downloads it
    download_ms: float = 0.0  # its share of e2e_ms


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    jobs: list[JobResult]
    wall_s: float  # first submit to last completion

    @property
    def completed(self) -> list[JobResult]:
        return [job for job in self.jobs if job.status == "completed"]

    @property
    def failures(self) -> list[JobResult]:
        return [job for job in self.jobs if job.status != "completed"]


class Probes(msgspec.Struct, kw_only=True):
    """Latencies (ms) of the API calls made while the batch ran, and what went wrong."""

    health_ms: list[float] = msgspec.field(default_factory=list)
    status_ms: list[float] = msgspec.field(default_factory=list)
    submit_ms: list[float] = msgspec.field(default_factory=list)  # once the batch is all in
    errors: list[str] = msgspec.field(default_factory=list)


def open_client(base_url: str, connections: int) -> httpx.AsyncClient:
    """A client for one server on loopback; never reads proxy settings from the environment."""
    if not base_url.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:")):
        raise ValueError(f"benchmarks only talk to loopback, not {base_url}")
    return httpx.AsyncClient(
        base_url=base_url,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(LONG_POLL_S + 30.0),
        trust_env=False,
    )


def _failed(job_id: str, started: float, t0: float, submit_ms: float, error: str) -> JobResult:
    now = time.perf_counter()
    return JobResult(
        job_id=job_id,
        status="error",
        submit_ms=submit_ms,
        e2e_ms=(now - started) * 1000,
        done_s=now - t0,
        error=error,
    )


async def run_job(
    client: httpx.AsyncClient,
    payload: Payload,
    t0: float,
    ids: list[str],
    on_submitted: Callable[[], None],
    *,
    download: bool = False,
) -> JobResult:
    """Submit one job and long-poll it to the end (on a lean connection of its own,
    except for multipart forms, which go through httpx); with ``download``, then read its
    result, which counts in ``e2e_ms``.

    ``on_submitted`` is called once the POST is over, whether it was accepted or not.
    """
    if payload.upload == "multipart":
        return await _run_job(client, payload, t0, ids, on_submitted, download)
    connection = LeanConnection(str(client.base_url))
    try:
        return await _run_job(connection, payload, t0, ids, on_submitted, download)
    finally:
        await connection.aclose()


async def _run_job(
    client: httpx.AsyncClient | LeanConnection,
    payload: Payload,
    t0: float,
    ids: list[str],
    on_submitted: Callable[[], None],
    download: bool,
) -> JobResult:
    started = time.perf_counter()
    try:
        response = await _post_job(client, payload)
    except (httpx.HTTPError, OSError, trio.BrokenResourceError) as exc:
        return _failed("", started, t0, 0.0, f"POST /jobs: {exc!r}")
    finally:
        on_submitted()
    submit_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 202:
        error = f"POST /jobs answered {response.status_code}: {response.content[:200]!r}"
        return _failed("", started, t0, submit_ms, error)
    job_id = str(response.json()["job_id"])
    ids.append(job_id)
    view: dict[str, Any] = {}
    dropped = 0
    for _ in range(MAX_POLLS):
        try:
            polled = await _get(client, f"/jobs/{job_id}", {"wait": str(LONG_POLL_S)})
        except (httpx.TransportError, OSError, trio.BrokenResourceError):
            # A client would poll again; counted, since it means the server cut a long-poll.
            dropped += 1
            continue
        view = polled.json()
        if view.get("status") in TERMINAL:
            break
    status = str(view.get("status", "unknown"))
    status = status if status in TERMINAL else f"stuck-{status}"
    problem: dict[str, Any] = view.get("error") or {}
    error = f"{problem.get('code')}: {problem.get('message')}" if problem else ""
    downloaded = 0
    ended = time.perf_counter()
    if download and status == "completed":
        downloaded, failure = await _download(client, job_id)
        if failure:
            status, error = "download-failed", failure
    done = time.perf_counter()
    return JobResult(
        job_id=job_id,
        status=status,
        submit_ms=submit_ms,
        e2e_ms=(done - started) * 1000,
        done_s=done - t0,
        error=error,
        result_width=view.get("result_width"),
        result_height=view.get("result_height"),
        dropped_polls=dropped,
        downloaded_bytes=downloaded,
        download_ms=(done - ended) * 1000,
    )


async def _download(client: httpx.AsyncClient | LeanConnection, job_id: str) -> tuple[int, str]:
    """``GET /jobs/{id}/download``, the whole body read: (its length, "" or what went wrong)."""
    path = f"/jobs/{job_id}/download"
    try:
        response = await _get(client, path, {})
    except (httpx.HTTPError, OSError, trio.BrokenResourceError) as exc:
        return 0, f"GET {path}: {exc!r}"
    if response.status_code != 200 or not response.content:
        return 0, f"GET {path} answered {response.status_code}: {response.content[:200]!r}"
    return len(response.content), ""


async def _post_job(
    client: httpx.AsyncClient | LeanConnection, payload: Payload
) -> httpx.Response | LeanResponse:
    if isinstance(client, httpx.AsyncClient):
        return await client.post("/jobs", **payload.request())
    if payload.upload == "json":
        return await client.request(
            "POST", "/jobs", body=payload.content, content_type="application/json"
        )
    return await client.request(
        "POST",
        "/jobs",
        params=payload.fields,
        body=payload.content,
        content_type=payload.media_type,
    )


async def _get(
    client: httpx.AsyncClient | LeanConnection, path: str, params: dict[str, str]
) -> httpx.Response | LeanResponse:
    if isinstance(client, httpx.AsyncClient):
        return await client.get(path, params=params)
    return await client.request("GET", path, params=params)


async def run_batch(
    client: httpx.AsyncClient,
    payload: Payload,
    count: int,
    *,
    ids: list[str] | None = None,
    on_done: Callable[[JobResult], None] | None = None,
    submitted: trio.Event | None = None,
    download: bool = False,
) -> BatchResult:
    """``count`` jobs at once, each submitted and then waited for by its own task (and
    with ``download``, its result read in full before it counts as done).

    ``submitted`` is set once every POST is over (answered, or failed): from then on the
    queue holds the backlog and no more uploads of the batch compete with a probe's.
    """
    results: list[JobResult] = []
    known = ids if ids is not None else []
    answered = 0
    t0 = time.perf_counter()

    def one_submitted() -> None:
        nonlocal answered
        answered += 1
        if answered == count and submitted is not None:
            submitted.set()

    async def one() -> None:
        result = await run_job(client, payload, t0, known, one_submitted, download=download)
        results.append(result)
        if on_done is not None:
            on_done(result)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    wall = max((job.done_s for job in results), default=0.0)
    return BatchResult(jobs=results, wall_s=wall)


async def serve_probes(
    base_url: str,
    ids: list[str],
    probes: Probes,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ~50 ms, alternately GET /health and GET /jobs/{latest id}, until cancelled."""
    connection = LeanConnection(base_url)
    task_status.started()
    try:
        for n in range(MAX_PROBES):
            path = "/health" if n % 2 == 0 or not ids else f"/jobs/{ids[-1]}"
            started = time.perf_counter()
            try:
                response = await connection.request("GET", path)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    probes.errors.append(f"GET {path} answered {response.status_code}")
                elif path == "/health":
                    probes.health_ms.append(elapsed)
                else:
                    probes.status_ms.append(elapsed)
            except LEAN_ERRORS as exc:
                probes.errors.append(f"GET {path}: {exc!r}")
            await trio.sleep(max(PROBE_INTERVAL_S - (time.perf_counter() - started), 0.005))
    finally:
        await connection.aclose()


async def serve_submit_probes(
    base_url: str,
    payload: Payload,
    loaded: trio.Event,
    probes: Probes,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Once ``loaded`` is set, every 500 ms POST ``payload`` and DELETE the job it made,
    until cancelled.

    Deleting at once keeps the probe's jobs from adding work for the workers; only the POST
    (send to answer) is timed.
    """
    connection = LeanConnection(base_url)
    task_status.started()
    try:
        await loaded.wait()
        for _ in range(MAX_PROBES):
            started = time.perf_counter()
            await _probe_submit(connection, payload, probes)
            await trio.sleep(max(SUBMIT_PROBE_INTERVAL_S - (time.perf_counter() - started), 0.005))
    finally:
        await connection.aclose()


async def _probe_submit(connection: LeanConnection, payload: Payload, probes: Probes) -> None:
    started = time.perf_counter()
    try:
        response = await _post_job(connection, payload)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 202:
            probes.errors.append(f"POST /jobs answered {response.status_code}")
            return
        probes.submit_ms.append(elapsed)
        job_id = str(response.json().get("job_id", ""))
    except LEAN_ERRORS as exc:
        probes.errors.append(f"POST /jobs: {exc!r}")
        return
    try:
        deleted = await connection.request("DELETE", f"/jobs/{job_id}")
        if deleted.status_code != 204:
            probes.errors.append(f"DELETE /jobs/{job_id} answered {deleted.status_code}")
    except LEAN_ERRORS as exc:
        probes.errors.append(f"DELETE /jobs/{job_id}: {exc!r}")

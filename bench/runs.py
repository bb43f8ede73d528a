"""One benchmark point: a fresh server, a warm-up, N concurrent jobs, and what they cost.

``measure_service`` is shared by ``bench.pool_sizes`` and ``bench.peers``: it starts
``python -m app`` with the given pool size, runs ``pool_size`` warm-up jobs (that spawns
the worker processes; not counted), then the measured batch with the API probes and the
/proc sampler running (plus, once all the batch's POSTs are answered, a 1 MB upload every
500 ms: submit latency under full load), and reads the server's own log lines for the
batch's jobs.
``measure_quality`` computes the PSNR of a result and of its PNG twin.
"""

from __future__ import annotations

import io
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import trio
from PIL import Image

from bench.ceiling import CeilingPoint, ceiling_at
from bench.load import (
    BatchResult,
    JobResult,
    Probes,
    Upload,
    make_payload,
    open_client,
    run_batch,
    serve_probes,
    serve_submit_probes,
)
from bench.procs import ProcessSampler, ResourceUsage
from bench.profile import open_profile
from bench.report import PoolPoint, Quality
from bench.server import RunningServer, ServerConfig, open_server
from bench.stats import summarize
from bench.workloads import WORKLOADS, Workload, corpus_dir, reference_psnr, source_bytes

__all__ = ["BATCH_DEADLINE_S", "measure_quality", "measure_service"]

# A whole batch (warm-up or measured) must end within this: bounded even if the server hangs.
BATCH_DEADLINE_S = 900.0
SAMPLE_INTERVAL_S = 0.1
# The "submit p50 <= 10 ms for a 1 MB image": mate__Elephants.jpg (1,028,192 bytes),
# raw upload, resize 200x200.
LOADED_SUBMIT = WORKLOADS["elephants-1080"]


async def _serve_sampling(sampler: ProcessSampler) -> None:
    while True:
        sampler.sample()
        await trio.sleep(SAMPLE_INTERVAL_S)


def _logged(server: RunningServer, event: str, field: str, ids: set[str]) -> list[float]:
    return [
        float(line[field])
        for line in server.logged(event)
        if line.get("job_id") in ids and isinstance(line.get(field), int | float)
    ]


def _size_error(workload: Workload, job: JobResult) -> str:
    """Why a completed resize has the wrong size ("" if it is right)."""
    if workload.operation != "resize" or job.status != "completed":
        return ""
    if (job.result_width, job.result_height) == (workload.width, workload.height):
        return ""
    return f"{job.job_id}: got {job.result_width}x{job.result_height}"


@asynccontextmanager
async def _maybe_profile(pid: int, path: Path | None) -> AsyncIterator[None]:
    context: AbstractAsyncContextManager[Any] = (
        open_profile(pid, path) if path is not None else nullcontext()
    )
    async with context:
        yield


async def measure_service(
    workload: Workload,
    data: bytes,
    *,
    pool_size: int,
    jobs: int,
    upload: Upload,
    ceiling: list[CeilingPoint],
    cores: int,
    on_done: Callable[[JobResult], None] | None = None,
    profile_to: Path | None = None,
    keep_outputs: bool = False,
    download: bool = False,
    app_root: str = "",
    probes: bool = True,
) -> tuple[PoolPoint, tuple[bytes, bytes] | None]:
    """Measure ``jobs`` concurrent jobs on a fresh server (of the source tree ``app_root``,
    see ``bench.server``; "" for this checkout).

    With ``download``, each job's result is read in full before the job counts as done.
    Without ``probes``, no status, health or 1 MB submit probes run beside the batch (when
    the server is compared with one that gets no such extra requests).
    With ``keep_outputs``, afterwards also download one result as served and the result
    of a PNG-output twin job (for :func:`measure_quality`).
    """
    payload = make_payload(workload, data, upload)
    loaded_payload = make_payload(LOADED_SUBMIT, source_bytes(LOADED_SUBMIT, corpus_dir()), "raw")
    config = ServerConfig(pool_size=pool_size, queue_size=max(1000, 4 * jobs), app_root=app_root)
    outputs: tuple[bytes, bytes] | None = None
    async with (
        open_server(config) as server,
        open_client(server.url, jobs + pool_size + 2) as client,
    ):
        with trio.fail_after(BATCH_DEADLINE_S):
            await run_batch(client, payload, pool_size, download=download)
        ids: list[str] = []
        probed = Probes()
        submitted = trio.Event()
        async with trio.open_nursery() as nursery:
            sampler = ProcessSampler(server.pid)
            nursery.start_soon(_serve_sampling, sampler)
            if probes:
                await nursery.start(serve_probes, server.url, ids, probed)
                await nursery.start(
                    serve_submit_probes, server.url, loaded_payload, submitted, probed
                )
            async with _maybe_profile(server.pid, profile_to):
                with trio.fail_after(BATCH_DEADLINE_S):
                    batch = await run_batch(
                        client,
                        payload,
                        jobs,
                        ids=ids,
                        on_done=on_done,
                        submitted=submitted,
                        download=download,
                    )
                usage = sampler.finish()
            nursery.cancel_scope.cancel()
        if keep_outputs and batch.completed:
            first = batch.completed[0].job_id
            outputs = await _download_outputs(client, workload, data, upload, first)
    found = _Found(config.pool_size, upload, batch, probed, usage, profile_to)
    return _point(workload, server, found, ceiling, cores), outputs


class _Found(NamedTuple):
    pool_size: int
    upload: Upload
    batch: BatchResult
    probes: Probes
    usage: ResourceUsage
    profile: Path | None


def _point(
    workload: Workload,
    server: RunningServer,
    found: _Found,
    ceiling: list[CeilingPoint],
    cores: int,
) -> PoolPoint:
    pool_size, upload, batch, probes, usage, profile_to = found
    ids = {job.job_id for job in batch.jobs}
    done = batch.completed
    processes = min(pool_size, cores)
    ceiling_rate = ceiling_at(ceiling, workload.name, processes)
    jobs_per_s = len(done) / batch.wall_s if batch.wall_s > 0 else math.nan
    failures = [f"{job.status} {job.error}".strip() for job in batch.failures]
    failures += [e for e in (_size_error(workload, job) for job in done) if e]
    return PoolPoint(
        workload=workload.name,
        pool_size=pool_size,
        jobs=len(batch.jobs),
        upload=upload,
        completed=len(done),
        failures=len(failures),
        failure_samples=failures[:5],
        wall_s=round(batch.wall_s, 3),
        jobs_per_s=round(jobs_per_s, 2),
        ceiling_processes=processes,
        ceiling_images_per_s=ceiling_rate,
        ceiling_ms_per_image=(1000 * processes / ceiling_rate) if ceiling_rate else math.nan,
        efficiency=round(jobs_per_s / ceiling_rate, 3) if ceiling_rate else math.nan,
        e2e_ms=summarize(job.e2e_ms for job in done),
        submit_ms=summarize(job.submit_ms for job in batch.jobs if job.submit_ms),
        submit_loaded_ms=summarize(probes.submit_ms),
        status_ms=summarize(probes.status_ms),
        health_ms=summarize(probes.health_ms),
        probe_errors=len(probes.errors),
        dropped_polls=sum(job.dropped_polls for job in batch.jobs),
        queue_wait_ms=summarize(_logged(server, "job.started", "queue_wait_ms", ids)),
        processing_ms=summarize(_logged(server, "job.finished", "processing_ms", ids)),
        usage=usage,
        server_exit_code=server.exit_code,
        profile=str(profile_to or ""),
    )


async def _download_outputs(
    client: httpx.AsyncClient, workload: Workload, data: bytes, upload: Upload, job_id: str
) -> tuple[bytes, bytes]:
    """The measured job's output as served, and a twin job's output asked for as PNG."""
    served = await client.get(f"/jobs/{job_id}/download")
    served.raise_for_status()
    twin = make_payload(workload, data, upload, output_format="png")
    with trio.fail_after(BATCH_DEADLINE_S):
        batch = await run_batch(client, twin, 1)
    if not batch.completed:
        raise RuntimeError(f"the PNG twin of {workload.name} failed: {batch.jobs[0].error}")
    png = await client.get(f"/jobs/{batch.completed[0].job_id}/download")
    png.raise_for_status()
    return served.content, png.content


def measure_quality(workload: Workload, data: bytes, served: bytes, png: bytes) -> Quality:
    """PSNR of the served output and of its PNG twin against the stock reference."""
    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
    return Quality(
        workload=workload.name,
        width=width,
        height=height,
        psnr_png_db=round(reference_psnr(workload, data, png), 2),
        served_format="jpeg" if served.startswith(b"\xff\xd8") else "png",
        psnr_served_db=round(reference_psnr(workload, data, served), 2),
    )

"""The web stack's own floor: server and client CPU per job when the handlers do nothing.

A minimal QuartTrio app (``bench.floor_server``: none of imgjobs' work in the request
path, only its wire types and JSON responses) has the service's two job routes:
``POST /jobs`` reads the raw body to its end and discards it, then answers 202
``{"job_id": ...}`` (it takes the service's multipart and JSON forms too, for
``bench.overhead``); ``GET /jobs/<id>`` answers 200 with a completed job view at once.
It runs under hypercorn's trio worker in a child process (127.0.0.1, a free port) with
the real server's settings:
``app.server.hypercorn_config`` and ``read_uploads_in_bigger_chunks`` (256 KiB reads).

The load is ``bench.pool_sizes``'s: per job a fresh ``bench.http.LeanConnection``, the
workload's image as a raw ``image/jpeg`` body with its job in the query string, then
``GET /jobs/{id}?wait=30``; N jobs at once (``--jobs``), then the same N one at a time.
Each batch runs ``--repeats`` times after one warm-up batch. Per batch: the server's CPU
(utime + stime from /proc/<pid>/stat, read again once the server is idle, since it sees
each connection close after our last answer; 10 ms ticks, so +-0.2 ms/job at N=50), this
process's CPU (``getrusage``) and jobs/s; the table shows the medians.

The bound. At pool size = cores every core is busy, and each job costs ``image_ms`` of
worker CPU (the ceiling's wall time of one image in one process while ``cores`` processes
run: ``1000 * cores / ceiling images/s``), plus the stack's floor ``server_ms``, plus the
load client's ``client_ms`` (it runs on the same cores). So service jobs/s can reach at
most ``cores * 1000 / (image_ms + server_ms + client_ms)``, against the ceiling's
``cores * 1000 / image_ms`` images/s; their ratio is the best efficiency any service on
this stack could reach here::

    best possible efficiency = image_ms / (image_ms + server_ms + client_ms)

with the 50-concurrent medians (that is how ``bench.pool_sizes`` loads the service).

Run from the project root (about a minute on 2 cores with the defaults)::

    python -m bench.floor                           # elephants-1080 and -5640, N=50, 5 repeats
    python -m bench.floor --repeats 2 --workload onepixel
    make bench-floor BENCH_ARGS="--jobs 100"

Prints a Markdown table on stdout (progress on stderr) and writes every figure and the
machine to ``bench/results/floor-<time>.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Literal, Protocol

import msgspec
import trio

from bench.ceiling import CeilingPoint, measure
from bench.floor_server import FloorError, FloorServer, open_floor_server
from bench.http import LeanConnection
from bench.load import LONG_POLL_S, Payload, make_payload
from bench.machine import Machine, describe_machine, summary_line
from bench.procs import (
    Quiet,
    add_quiet_options,
    children,
    machine_cpu,
    own_cpu_s,
    process_cpu_s,
    wait_for_quiet,
)
from bench.report import results_dir, source_revision, stamp, write_json
from bench.stats import Progress
from bench.workloads import WORKLOADS, corpus_dir, source_bytes

__all__ = ["Batch", "FloorReport", "Target", "main", "run", "run_batch", "run_job"]

DEFAULT_WORKLOADS = ("elephants-1080", "elephants-5640")
# 50 x 16 MB over loopback takes seconds; this only bounds a hung server.
BATCH_DEADLINE_S = 300.0
# /proc counts CPU in 10 ms ticks: two equal reads 50 ms apart mean the server is idle.
IDLE_SAMPLE_S = 0.05
IDLE_DEADLINE_S = 10.0
Mode = Literal["concurrent", "sequential"]
MODES: tuple[Mode, ...] = ("concurrent", "sequential")


class Target(Protocol):
    """A server to load: a ``FloorServer``, or a real one (``bench.server.RunningServer``)."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int: ...


async def run_job(url: str, payload: Payload) -> str:
    """One job as ``bench.load`` makes it: its own connection, the upload, the long-poll.
    ``payload`` is sent as it is: ``fields`` as the query, ``media_type`` as the body's
    Content-Type. Returns the job's id."""
    connection = LeanConnection(url)
    try:
        submitted = await connection.request(
            "POST",
            "/jobs",
            params=payload.fields,
            body=payload.content,
            content_type=payload.media_type,
        )
        if submitted.status_code != 202:
            raise FloorError(f"POST /jobs answered {submitted.status_code}")
        job_id = str(submitted.json()["job_id"])
        polled = await connection.request(
            "GET", f"/jobs/{job_id}", params={"wait": str(LONG_POLL_S)}
        )
        if polled.status_code != 200 or polled.json().get("status") != "completed":
            raise FloorError(f"GET /jobs/{job_id} answered {polled.status_code}")
    finally:
        await connection.aclose()
    return job_id


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """One batch of jobs and what it cost."""

    wall_s: float  # first POST sent to last view read
    server_cpu_s: float
    workers_cpu_s: float  # the server's child processes (none for the floor server)
    client_cpu_s: float
    foreign_cpu_pct: float  # other processes' share of the machine meanwhile: noise


async def run_batch(
    server: Target, payload: Payload, jobs: int, mode: Mode, *, ids: list[str] | None = None
) -> Batch:
    """``jobs`` jobs, all at once or one after the other, and the CPU each side used;
    the jobs' ids are appended to ``ids``."""
    made = ids if ids is not None else []

    async def one() -> None:
        made.append(await run_job(server.url, payload))

    machine_before = machine_cpu()
    server_before = process_cpu_s(server.pid) or 0.0
    workers_before = children_cpu_s(server.pid)
    client_before = own_cpu_s()
    started = time.perf_counter()
    with trio.fail_after(BATCH_DEADLINE_S):
        if mode == "concurrent":
            async with trio.open_nursery() as nursery:
                for _ in range(jobs):
                    nursery.start_soon(one)
        else:
            for _ in range(jobs):
                await one()
    wall = time.perf_counter() - started
    client = own_cpu_s() - client_before  # before the idle wait, whose polling is ours
    server_cpu = await wait_server_idle(server.pid) - server_before
    # A worker that exited meanwhile takes its CPU with it; one started counts from zero.
    workers = sum(
        cpu - workers_before.get(pid, 0.0) for pid, cpu in children_cpu_s(server.pid).items()
    )
    machine_after = machine_cpu()
    window = machine_after.total_s - machine_before.total_s
    busy = machine_after.busy_s - machine_before.busy_s
    foreign = busy - server_cpu - workers - (own_cpu_s() - client_before)
    return Batch(
        wall_s=round(wall, 4),
        server_cpu_s=round(server_cpu, 3),
        workers_cpu_s=round(workers, 3),
        client_cpu_s=round(client, 4),
        foreign_cpu_pct=round(max(100 * foreign / window, 0.0), 1) if window > 0 else 0.0,
    )


def children_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each live child process of ``pid``, by pid."""
    found = {child: process_cpu_s(child) for child in children(pid)}
    return {child: cpu for child, cpu in found.items() if cpu is not None}


async def wait_server_idle(pid: int) -> float:
    """The server's CPU seconds once two reads ``IDLE_SAMPLE_S`` apart agree.

    Polled, not a handshake: the server has no "done" to report. After the client's last
    read it still sees every connection close, and that CPU belongs to the batch.
    """
    last = process_cpu_s(pid)
    with trio.fail_after(IDLE_DEADLINE_S):
        while True:
            await trio.sleep(IDLE_SAMPLE_S)
            now = process_cpu_s(pid)
            if now is None:
                raise FloorError("the floor server exited during a batch")
            if now == last:
                return now
            last = now


class FloorPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One workload in one mode: the medians over the measured batches (not the warm-up)."""

    workload: str
    upload_bytes: int
    mode: Mode
    jobs: int
    server_ms_per_job: float
    client_ms_per_job: float
    jobs_per_s: float
    batches: list[Batch]


async def measure_point(
    server: FloorServer,
    workload: str,
    payload: Payload,
    *,
    jobs: int,
    repeats: int,
    mode: Mode,
    on_batch: Callable[[], None],
) -> FloorPoint:
    await run_batch(server, payload, jobs, mode)  # warm-up: imports, caches, allocator
    on_batch()
    batches = []
    for _ in range(repeats):
        batches.append(await run_batch(server, payload, jobs, mode))
        on_batch()
    return FloorPoint(
        workload=workload,
        upload_bytes=len(payload.content),
        mode=mode,
        jobs=jobs,
        server_ms_per_job=round(
            statistics.median(1000 * b.server_cpu_s / jobs for b in batches), 2
        ),
        client_ms_per_job=round(
            statistics.median(1000 * b.client_cpu_s / jobs for b in batches), 2
        ),
        jobs_per_s=round(statistics.median(jobs / b.wall_s for b in batches), 1),
        batches=batches,
    )


class Bound(msgspec.Struct, frozen=True, kw_only=True):
    """The best efficiency any service on this stack could reach for one workload."""

    workload: str
    processes: int
    ceiling_images_per_s: float
    image_ms: float  # 1000 * processes / ceiling images/s: one image, every core busy
    server_floor_ms: float
    client_ms: float
    best_efficiency: float
    best_jobs_per_s: float


def bound(ceiling: CeilingPoint, concurrent: FloorPoint) -> Bound:
    image_ms = 1000 * ceiling.processes / ceiling.images_per_s
    per_job = image_ms + concurrent.server_ms_per_job + concurrent.client_ms_per_job
    return Bound(
        workload=ceiling.workload,
        processes=ceiling.processes,
        ceiling_images_per_s=ceiling.images_per_s,
        image_ms=round(image_ms, 2),
        server_floor_ms=concurrent.server_ms_per_job,
        client_ms=concurrent.client_ms_per_job,
        best_efficiency=round(image_ms / per_job, 4),
        best_jobs_per_s=round(1000 * ceiling.processes / per_job, 2),
    )


class FloorReport(msgspec.Struct, frozen=True, kw_only=True):
    started_at: str
    command: list[str]
    source: str
    machine: Machine
    jobs: int
    repeats: int
    ceiling_duration_s: float
    ceiling: list[CeilingPoint]
    points: list[FloorPoint]
    bounds: list[Bound]
    server_exit_code: int | None
    machine_after: Machine


class Options(argparse.Namespace):
    workload: list[str] | None
    jobs: int
    repeats: int
    ceiling_duration_s: float
    corpus: Path
    output: Path | None
    quiet_below: float
    quiet_wait_s: float


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--workload",
        action="append",
        choices=sorted(WORKLOADS),
        help=f"repeatable (default: {', '.join(DEFAULT_WORKLOADS)})",
    )
    parser.add_argument("--jobs", type=int, default=50, help="N: jobs per batch")
    parser.add_argument("--repeats", type=int, default=5, help="measured batches per point")
    parser.add_argument("--ceiling-duration-s", type=float, default=3.0)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--output", type=Path, help="default bench/results/floor-<time>.json")
    add_quiet_options(parser)
    options = parser.parse_args(argv, namespace=Options())
    if options.jobs < 1 or options.repeats < 1:
        parser.error("--jobs and --repeats must be at least 1")
    return options


def _label(mode: Mode, jobs: int) -> str:
    return f"{jobs} concurrent" if mode == "concurrent" else "sequential"


async def run(options: Options) -> FloorReport:
    """The ceiling of every workload at ``cores`` processes, then the floor server's load."""
    # Usable cores, as bench.pool_sizes counts them (os.cpu_count() unless pinned).
    cores = len(os.sched_getaffinity(0))
    machine = describe_machine()
    workloads = [WORKLOADS[name] for name in options.workload or DEFAULT_WORKLOADS]
    quiet = (
        Quiet(below_pct=options.quiet_below, max_wait_s=options.quiet_wait_s)
        if options.quiet_wait_s > 0
        else None
    )
    progress = Progress(len(workloads) * (1 + len(MODES)))
    progress.message(f"floor: {summary_line(machine)}")
    ceiling: list[CeilingPoint] = []
    points: list[FloorPoint] = []
    try:
        # First, with no server running: the ceiling needs the whole machine.
        for workload in workloads:
            progress.step(f"{workload.name} ceiling at {cores} processes")
            if quiet is not None:
                await trio.to_thread.run_sync(wait_for_quiet, quiet)
            found = await trio.to_thread.run_sync(
                partial(
                    measure,
                    workload,
                    cores,
                    corpus=options.corpus,
                    duration_s=options.ceiling_duration_s,
                )
            )
            ceiling.append(found)
            progress.finish_step(f"{found.images_per_s:.1f} images/s")
        async with open_floor_server() as server:
            for workload in workloads:
                payload = make_payload(workload, source_bytes(workload, options.corpus), "raw")
                for mode in MODES:
                    label = _label(mode, options.jobs)
                    progress.step(f"{workload.name} {label}", options.repeats + 1)
                    if quiet is not None:
                        await trio.to_thread.run_sync(wait_for_quiet, quiet)
                    point = await measure_point(
                        server,
                        workload.name,
                        payload,
                        jobs=options.jobs,
                        repeats=options.repeats,
                        mode=mode,
                        on_batch=progress.advance,
                    )
                    points.append(point)
                    progress.finish_step(
                        f"server {point.server_ms_per_job:.2f} ms/job,"
                        f" client {point.client_ms_per_job:.2f} ms/job,"
                        f" {point.jobs_per_s:.0f} jobs/s"
                    )
    finally:
        progress.close()
    concurrent = {p.workload: p for p in points if p.mode == "concurrent"}
    return FloorReport(
        started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=[Path(sys.executable).name, "-m", "bench.floor", *sys.argv[1:]],
        source=source_revision(),
        machine=machine,
        jobs=options.jobs,
        repeats=options.repeats,
        ceiling_duration_s=options.ceiling_duration_s,
        ceiling=ceiling,
        points=points,
        bounds=[bound(c, concurrent[c.workload]) for c in ceiling if c.workload in concurrent],
        server_exit_code=server.exit_code,
        machine_after=describe_machine(),
    )


def markdown(report: FloorReport) -> str:
    """The table, the machine, and the bound of each workload written out."""
    bounds = {b.workload: b for b in report.bounds}
    lines = [
        f"Measured {report.started_at} on {summary_line(report.machine)}; imgjobs {report.source}.",
        f"The web stack alone (hypercorn + h11 + quart-trio, handlers that do nothing):"
        f" medians of {report.repeats} batches of {report.jobs} jobs after a warm-up;"
        f" ceiling at {report.machine.usable_cores} processes.",
        "",
        "| workload | upload MB | mode | server CPU ms/job | client CPU ms/job | jobs/s"
        " | ceiling ms/image | best possible efficiency |",
        "|---|--:|---|--:|--:|--:|--:|--:|",
    ]
    for point in report.points:
        found = bounds.get(point.workload)
        image_ms = f"{found.image_ms:.1f}" if found is not None else "-"
        best = (
            f"{found.best_efficiency:.1%}"
            if found is not None and point.mode == "concurrent"
            else "-"
        )
        cells = [
            point.workload,
            f"{point.upload_bytes / 1e6:.1f}",
            _label(point.mode, point.jobs),
            f"{point.server_ms_per_job:.2f}",
            f"{point.client_ms_per_job:.2f}",
            f"{point.jobs_per_s:.0f}",
            image_ms,
            best,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for b in report.bounds:
        lines.append(
            f"{b.workload}: best possible efficiency = image_ms / (image_ms + server_floor_ms"
            f" + client_ms) = {b.image_ms:.1f} / ({b.image_ms:.1f} + {b.server_floor_ms:.2f}"
            f" + {b.client_ms:.2f}) = {b.best_efficiency:.1%}: at most {b.best_jobs_per_s:.1f}"
            f" jobs/s against the ceiling's {b.ceiling_images_per_s:.1f} images/s."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    output = options.output or results_dir() / f"floor-{stamp()}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report = trio.run(run, options)
    print(markdown(report))
    write_json(output, report)
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()

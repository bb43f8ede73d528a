"""imgjobs' server CPU per job and per status read against the floor's, per upload form.

The goal it checks: imgjobs' server process spends at most 1.3x the floor's CPU per job
for each upload form (raw ``image/jpeg``, ``multipart/form-data``, base64 JSON) at 1 MB
and 16 MB, and at most 1.2x the floor's per ``GET /jobs/{id}`` of a completed job.

imgjobs (``python -m app``, pool size 2, via ``bench.server``) and the floor
(``bench.floor_server``: the same hypercorn settings, handlers that only get the image out
of the body) run side by side and get the same bodies, each built once before anything is
measured. 1 MB is ``mate__Elephants.jpg`` (1 028 192 bytes); 16 MB the corpus's largest
photo, ``mate__Elephants_5640x3172.jpg`` (16 376 668 bytes; ``plasma__Patak__5120x2880.png``
is only 13.3 MB); each job is a ``thumbnail 200x200``.

A batch is ``bench.floor.run_batch``: ``--jobs`` jobs at once, each ``POST /jobs`` then
``GET /jobs/{id}?wait=30`` on a connection of its own. Server CPU is the hypercorn
process's alone (utime + stime in /proc/<pid>/stat; the image workers' is shown apart)
from both servers idle to the server idle again; the client (this process) is not in it.
Batches alternate imgjobs, floor, imgjobs... (a warm-up pair, then ``--repeats`` pairs) so
noise hits both; imgjobs' jobs are deleted after each batch, outside its window. Status
reads: ``--gets`` sequential GETs of a completed job on one keep-alive connection, paired
the same way. Figures: medians [min-max] over batches; ratio of the medians; pair ratios
[min-max] of each imgjobs batch to the floor batch right after it.

Run from the project root: ``python -m bench.overhead`` or ``make bench-overhead`` (7 to 8
minutes on 2 cores), or e.g. ``python -m bench.overhead --size 1mb --form json --repeats 9``.
Prints Markdown tables on stdout (progress on stderr) and writes every batch, the machine
and the git revision to ``bench/results/overhead-<time>.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from bench.floor import BATCH_DEADLINE_S, Batch, Target, run_batch, run_job, wait_server_idle
from bench.floor_server import open_floor_server
from bench.http import LeanConnection
from bench.load import Payload, Upload, make_payload
from bench.machine import Machine, describe_machine, summary_line
from bench.procs import Quiet, add_quiet_options, own_cpu_s, wait_for_quiet
from bench.report import results_dir, source_revision, stamp, write_json
from bench.server import ServerConfig, open_server
from bench.stats import Progress, Spread, ratio, spread
from bench.workloads import WORKLOADS, Workload, corpus_dir, source_bytes

__all__ = [
    "FORMS",
    "SIZES",
    "OverheadReport",
    "Spread",  # from bench.stats, where it lives; kept importable from here
    "main",
    "markdown",
    "parse_options",
    "run",
    "spread",
]

FORMS: tuple[Upload, ...] = ("raw", "multipart", "json")
# Thumbnails: cheap for the workers, so the figures are about the server.
SIZES: dict[str, Workload] = {
    "1mb": msgspec.structs.replace(
        WORKLOADS["elephants-1080"], name="elephants-1080-thumbnail", operation="thumbnail"
    ),
    "16mb": WORKLOADS["elephants-5640"],  # thumbnail 200x200 already
}
JOB_GOAL = 1.3  # imgjobs / floor, server CPU per job
STATUS_GOAL = 1.2  # the same per GET /jobs/{id}
POOL_SIZE = 2
T = TypeVar("T")


class OverheadError(Exception):
    """A server answered a request of the benchmark other than as it should."""


def multipart_body(fields: dict[str, str], image: bytes, media_type: str) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body (the fields, then the ``image`` file part, as httpx
    orders them) and its Content-Type."""
    boundary = uuid.uuid4().hex
    if boundary.encode() in image:
        raise OverheadError("the multipart boundary occurs in the image; run again")
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="upload"\r\n'
        f"Content-Type: {media_type}\r\n\r\n"
    ).encode()
    body = head + part + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wire_payload(workload: Workload, image: bytes, form: Upload) -> Payload:
    """The request ``bench.floor.run_job`` sends as it is: ``fields`` as the query,
    ``content`` as the body, ``media_type`` as its Content-Type."""
    raw = make_payload(workload, image, "raw")
    if form == "raw":
        return raw
    if form == "json":
        content = make_payload(workload, image, "json").content
        return Payload(upload=form, content=content, media_type="application/json", fields={})
    content, content_type = multipart_body(raw.fields, image, raw.media_type)
    return Payload(upload=form, content=content, media_type=content_type, fields={})


class StatusBatch(msgspec.Struct, frozen=True, kw_only=True):
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float


class Compared(msgspec.Struct, frozen=True, kw_only=True):
    """The same figure on both servers, per job or per GET, in ms."""

    imgjobs: Spread
    floor: Spread
    ratio: float  # of the medians
    pair_ratios: Spread  # each imgjobs batch against the floor batch right after it
    goal: float


def per_ms(batches: Sequence[Batch] | Sequence[StatusBatch], count: int) -> list[float]:
    """Each batch's server CPU per job or per GET, in ms."""
    return [1000 * batch.server_cpu_s / count for batch in batches]


def compare(imgjobs_ms: Sequence[float], floor_ms: Sequence[float], goal: float) -> Compared:
    return Compared(
        imgjobs=spread(imgjobs_ms),
        floor=spread(floor_ms),
        ratio=round(ratio(statistics.median(imgjobs_ms), statistics.median(floor_ms)), 3),
        pair_ratios=spread([ratio(a, b) for a, b in zip(imgjobs_ms, floor_ms, strict=True)]),
        goal=goal,
    )


class JobPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One upload form at one size: server CPU per job on both servers."""

    form: Upload
    size: str
    image: str
    image_bytes: int
    body_bytes: int
    job: str
    jobs: int
    server_ms: Compared
    imgjobs_workers_ms: Spread
    foreign_cpu_pct: float  # median share of the machine other processes took: noise
    imgjobs: list[Batch]
    floor: list[Batch]


class StatusPoint(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /jobs/{id}`` of a completed job on one keep-alive connection, per GET."""

    gets: int
    server_ms: Compared
    # The client's CPU for the same work on both: unequal when the machine's speed drifted.
    imgjobs_client_ms: Spread
    floor_client_ms: Spread
    imgjobs: list[StatusBatch]
    floor: list[StatusBatch]


class OverheadReport(msgspec.Struct, frozen=True, kw_only=True):
    started_at: str
    command: list[str]
    source: str
    machine: Machine
    pool_size: int
    jobs: int
    repeats: int
    points: list[JobPoint]
    status: StatusPoint
    imgjobs_exit_code: int | None
    floor_exit_code: int | None
    machine_after: Machine


async def alternate(
    imgjobs: Target,
    floor: Target,
    measure: Callable[[Target], Awaitable[T]],
    *,
    repeats: int,
    on_batch: Callable[[], None],
) -> tuple[list[T], list[T]]:
    """A warm-up pair, then ``repeats`` measured pairs, imgjobs first in each, each
    measurement started with both servers idle: (imgjobs', floor's)."""
    kept: tuple[list[T], list[T]] = ([], [])
    for round_ in range(repeats + 1):
        for server, mine in zip((imgjobs, floor), kept, strict=True):
            for idle in (imgjobs, floor):
                await wait_server_idle(idle.pid)
            found = await measure(server)
            if round_:
                mine.append(found)
            on_batch()
    return kept


async def delete_jobs(url: str, ids: Sequence[str]) -> None:
    connection = LeanConnection(url)
    try:
        with trio.fail_after(BATCH_DEADLINE_S):
            for job_id in ids:
                answer = await connection.request("DELETE", f"/jobs/{job_id}")
                if answer.status_code != 204:
                    raise OverheadError(f"DELETE /jobs/{job_id} answered {answer.status_code}")
    finally:
        await connection.aclose()


async def measure_jobs(
    imgjobs: Target,
    floor: Target,
    size: str,
    image_bytes: int,
    payload: Payload,
    *,
    jobs: int,
    repeats: int,
    on_batch: Callable[[], None],
) -> JobPoint:
    """``jobs`` concurrent jobs per batch on both servers, alternating."""

    async def batch(server: Target) -> Batch:
        ids: list[str] = []
        found = await run_batch(server, payload, jobs, "concurrent", ids=ids)
        if server is imgjobs:
            await delete_jobs(server.url, ids)  # once its CPU is read: not in the batch
        return found

    mine, theirs = await alternate(imgjobs, floor, batch, repeats=repeats, on_batch=on_batch)
    workload = SIZES[size]
    return JobPoint(
        form=payload.upload,
        size=size,
        image=workload.source,
        image_bytes=image_bytes,
        body_bytes=len(payload.content),
        job=workload.job,
        jobs=jobs,
        server_ms=compare(per_ms(mine, jobs), per_ms(theirs, jobs), JOB_GOAL),
        imgjobs_workers_ms=spread([1000 * b.workers_cpu_s / jobs for b in mine]),
        foreign_cpu_pct=statistics.median(b.foreign_cpu_pct for b in mine + theirs),
        imgjobs=mine,
        floor=theirs,
    )


async def read_status(server: Target, job_id: str, gets: int) -> StatusBatch:
    """``gets`` sequential GETs of one job on one connection, opened before the window."""
    connection = LeanConnection(server.url)
    path = f"/jobs/{job_id}"

    async def get() -> None:
        answer = await connection.request("GET", path)
        if answer.status_code != 200:
            raise OverheadError(f"GET {path} answered {answer.status_code}")

    try:
        await get()
        server_before = await wait_server_idle(server.pid)
        client_before = own_cpu_s()
        started = time.perf_counter()
        with trio.fail_after(BATCH_DEADLINE_S):
            for _ in range(gets):
                await get()
        wall = time.perf_counter() - started
        client = own_cpu_s() - client_before
        server_cpu = await wait_server_idle(server.pid) - server_before
    finally:
        await connection.aclose()
    return StatusBatch(
        wall_s=round(wall, 4), server_cpu_s=round(server_cpu, 3), client_cpu_s=round(client, 4)
    )


async def measure_status(
    imgjobs: Target,
    floor: Target,
    payload: Payload,
    *,
    gets: int,
    repeats: int,
    on_batch: Callable[[], None],
) -> StatusPoint:
    """One job on each server, then ``gets`` reads of its status per batch, alternating."""
    job_ids = {server.pid: await run_job(server.url, payload) for server in (imgjobs, floor)}

    async def batch(server: Target) -> StatusBatch:
        return await read_status(server, job_ids[server.pid], gets)

    mine, theirs = await alternate(imgjobs, floor, batch, repeats=repeats, on_batch=on_batch)
    return StatusPoint(
        gets=gets,
        server_ms=compare(per_ms(mine, gets), per_ms(theirs, gets), STATUS_GOAL),
        imgjobs_client_ms=spread([1000 * b.client_cpu_s / gets for b in mine]),
        floor_client_ms=spread([1000 * b.client_cpu_s / gets for b in theirs]),
        imgjobs=mine,
        floor=theirs,
    )


class Options(argparse.Namespace):
    size: list[str] | None
    form: list[Upload] | None
    jobs: int
    repeats: int
    gets: int
    corpus: Path
    output: Path | None
    quiet_below: float
    quiet_wait_s: float


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--size", action="append", choices=sorted(SIZES), help="repeatable (default: all)"
    )
    parser.add_argument("--form", action="append", choices=FORMS, help="repeatable (default: all)")
    parser.add_argument("--jobs", type=int, default=50, help="N: concurrent jobs per batch")
    parser.add_argument("--repeats", type=int, default=5, help="measured batches per server")
    parser.add_argument("--gets", type=int, default=2000, help="status reads per batch")
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--output", type=Path, help="default bench/results/overhead-<time>.json")
    add_quiet_options(parser)
    options = parser.parse_args(argv, namespace=Options())
    if min(options.jobs, options.repeats, options.gets) < 1:
        parser.error("--jobs, --repeats and --gets must be at least 1")
    return options


async def run(options: Options) -> OverheadReport:
    """Both servers side by side: every form at every size, then the status reads."""
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = describe_machine()
    sizes = options.size or list(SIZES)
    quiet = Quiet(below_pct=options.quiet_below, max_wait_s=options.quiet_wait_s)
    # Every body is built here, once, before any server is measured.
    images = {size: source_bytes(SIZES[size], options.corpus) for size in sizes}
    payloads = [
        (size, wire_payload(SIZES[size], images[size], form))
        for size in sizes
        for form in options.form or FORMS
    ]
    progress = Progress(len(payloads) + 1)
    progress.message(f"overhead: {summary_line(machine)}")

    async def step(label: str) -> None:
        progress.step(label, 2 * (options.repeats + 1))
        if options.quiet_wait_s > 0:
            await trio.to_thread.run_sync(wait_for_quiet, quiet)

    def finish(found: Compared, unit: str) -> None:
        progress.finish_step(
            f"imgjobs {found.imgjobs.median:.2f} ms/{unit},"
            f" floor {found.floor.median:.2f} ms/{unit}, {found.ratio:.2f}x"
        )

    points: list[JobPoint] = []
    try:
        async with (
            open_server(ServerConfig(pool_size=POOL_SIZE)) as imgjobs,
            open_floor_server() as floor,
        ):
            for size, payload in payloads:
                await step(f"{payload.upload} {size}")
                point = await measure_jobs(
                    imgjobs,
                    floor,
                    size,
                    len(images[size]),
                    payload,
                    jobs=options.jobs,
                    repeats=options.repeats,
                    on_batch=progress.advance,
                )
                points.append(point)
                finish(point.server_ms, "job")
            await step(f"{options.gets} status reads")
            status = await measure_status(
                imgjobs,
                floor,
                wire_payload(SIZES[sizes[0]], images[sizes[0]], "raw"),
                gets=options.gets,
                repeats=options.repeats,
                on_batch=progress.advance,
            )
            finish(status.server_ms, "GET")
    finally:
        progress.close()
    return OverheadReport(
        started_at=started_at,
        command=[Path(sys.executable).name, "-m", "bench.overhead", *sys.argv[1:]],
        source=source_revision(),
        machine=machine,
        pool_size=POOL_SIZE,
        jobs=options.jobs,
        repeats=options.repeats,
        points=points,
        status=status,
        imgjobs_exit_code=imgjobs.exit_code,
        floor_exit_code=floor.exit_code,
        machine_after=describe_machine(),
    )


def _cells(compared: Compared, digits: int) -> list[str]:
    met = "met" if compared.ratio <= compared.goal else "**not met**"
    return [
        compared.imgjobs.cell(digits),
        compared.floor.cell(digits),
        f"{compared.ratio:.2f}x",
        compared.pair_ratios.cell(),
        f"<= {compared.goal:g}x: {met}",
    ]


def markdown(report: OverheadReport) -> str:
    """The two tables, with what was measured and how."""
    lines = [
        f"Measured {report.started_at} on {summary_line(report.machine)}; imgjobs {report.source}.",
        f"Server-process CPU per job (hypercorn's process alone, read once idle) of imgjobs"
        f" (pool size {report.pool_size}) and of the floor (same hypercorn settings, empty"
        f" handlers): {report.jobs} concurrent jobs per batch, each POST /jobs then"
        f" GET /jobs/{{id}}?wait=30; median [min-max] of {report.repeats} batches per server"
        f" after a warm-up pair, batches alternating; pair ratios: each imgjobs batch to the"
        f" floor batch after it.",
        "",
        "| form | size | image | body MB | imgjobs server ms/job | floor server ms/job"
        " | ratio | pair ratios | goal | imgjobs workers ms/job | other CPU % |",
        "|---|---|---|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for p in report.points:
        cells = [
            p.form,
            p.size,
            f"{p.image} ({p.image_bytes / 1e6:.1f} MB), {p.job}",
            f"{p.body_bytes / 1e6:.1f}",
            *_cells(p.server_ms, 2),
            p.imgjobs_workers_ms.cell(),
            f"{p.foreign_cpu_pct:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    s = report.status
    lines += [
        "",
        f"Status reads: {s.gets} sequential GET /jobs/{{id}} of a completed job per batch on"
        f" one keep-alive connection, as above. The client's CPU does the same work against"
        f" both servers: where its two figures differ, the machine's speed drifted.",
        "",
        "| request | imgjobs server ms/GET | floor server ms/GET | ratio | pair ratios | goal"
        " | client ms/GET with imgjobs | with floor |",
        "|---|--:|--:|--:|--:|---|--:|--:|",
        f"| GET /jobs/{{id}} | {' | '.join(_cells(s.server_ms, 3))}"
        f" | {s.imgjobs_client_ms.cell(3)} | {s.floor_client_ms.cell(3)} |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    output = options.output or results_dir() / f"overhead-{stamp()}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report = trio.run(run, options)
    print(markdown(report))
    write_json(output, report)
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()

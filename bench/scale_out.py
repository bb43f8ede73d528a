"""Jobs/s and CPU per job with 1 and 2 worker nodes on PostgreSQL + S3, against embedded.

Configurations (``--config``, repeatable; default all four):

- ``embedded``: one ``python -m app`` (SQLite, local folders), ``WORKER_POOL_SIZE=2``.
- ``1x2``: PostgreSQL + S3 (Ceph RGW), one API node (``SERVICE_ROLE=api``) and one worker
  node (``SERVICE_ROLE=worker``, ``WORKER_POOL_SIZE=2``).
- ``2x1``: the same with two worker nodes of pool 1: as many image processes as 2 cores.
- ``2x2``: two worker nodes of pool 2: twice as many processes as 2 cores.

Method. PostgreSQL (``tests.pg_server``: fsync off) and RGW (``tests.rgw_server``: a
monitor, an in-memory OSD and radosgw) start once, before anything is measured, and run
through every batch. Each round runs every configuration once, the order rotated each
round, so machine noise hits all; ``--repeats`` rounds (3). A configuration starts fresh in
every round: new node processes (``bench.server``: port 0, ready on ``server.listening``),
and for the shared ones a new database and a new bucket (the database is dropped after).
Each fresh node set gets a warm-up batch (``WARMUP_JOBS`` jobs of each workload, not
measured), then one measured batch per workload (``--workload``): ``--jobs`` jobs (200)
from ``--concurrency`` submitters (50), each job on a connection of its own to the API
node: ``POST /jobs`` (a raw ``image/jpeg`` body, the 1 MB ``mate__Elephants.jpg``), then
``GET /jobs/{id}?wait=30``, then ``GET /jobs/{id}/download``: what users do. jobs/s is the
batch's jobs over first POST to last download; latency is POST to the answer saying
completed, p50 / p95 over every job of the measured batches. A batch's jobs are deleted
through the API after its window.

CPU per job: utime + stime (/proc/<pid>/stat) of each node process and, apart, of its image
workers (its descendants, with the children they reaped: a worker that exits still counts),
of PostgreSQL (the postmaster, its backends and what it reaped) and of RGW (ceph-mon,
ceph-osd, radosgw), from the first POST until every node process is idle again. The
backends' idle upkeep is in their figures; the embedded batches, which do not use them,
show what it is. How the jobs split between worker nodes: each node's ``job.started`` log
lines of the batch's jobs. "other CPU" is what processes outside the benchmark took: noise.

What 2 cores can and cannot show. A second worker node adds processes, not cores: the image
work already fills both cores with pool 2 (``bench.pool_sizes``), so on this machine
throughput cannot rise with a node; 2x2 adds processes for the same cores (at most they fill
the moments a job's slot waits on S3 or PostgreSQL). What it can show: the cost of
PostgreSQL + S3 against SQLite + local folders per job (the API and worker nodes' own CPU,
PostgreSQL's and RGW's, all on the same 2 cores, so every extra ms/job is taken from image
work), that the queue splits the work across nodes (``job.started`` per node), and that a
node more loses little (2x1 against 1x2). What it cannot: scaling. On machines with more
cores, or more machines, each worker node's share grows with its cores
(``cores * 1000 / image ms per job``), until PostgreSQL, RGW or the API node tops out; the
API node's ceiling is its own event loop, ``1000 / its server ms per job`` jobs/s (shown in
the CPU table), and more API nodes behind a balancer raise it.

Run from the project root: ``python -m bench.scale_out`` or ``make bench-scale-out``
(11 minutes on 2 cores), ``--quick`` for a smoke run (20 jobs, 1 round: 1 minute), or e.g.
``python -m bench.scale_out --config 1x2 --config 2x1 --workload thumbnail --repeats 5``.
Prints Markdown tables on stdout (progress on stderr) and writes every batch, the machine
and the git revision to ``bench/results/scale_out-<time>.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import msgspec
import trio

from bench.floor import BATCH_DEADLINE_S, wait_server_idle
from bench.load import TERMINAL, Payload, make_payload, open_client
from bench.load import run_job as load_job
from bench.machine import Machine, describe_machine, summary_line
from bench.overhead import delete_jobs
from bench.procs import (
    TICKS_PER_S,
    Quiet,
    add_quiet_options,
    children,
    machine_cpu,
    own_cpu_s,
    process_cpu_s,
    wait_for_quiet,
)
from bench.report import results_dir, source_revision, stamp, write_json
from bench.server import RunningServer, ServerConfig, open_server
from bench.stats import Progress, Spread, Summary, ratio, spread, summarize
from bench.workloads import Workload, corpus_dir, source_bytes
from tests.pg_server import create_database, drop_database, running_postgres
from tests.rgw_server import RgwServer, running_rgw

__all__ = ["LAYOUTS", "WORKLOADS", "Backends", "ScaleOutReport", "main", "markdown", "run"]

ELEPHANTS = "mate__Elephants.jpg"  # 1920x1080 progressive JPEG, 1 028 192 bytes
WORKLOADS: dict[str, Workload] = {
    "thumbnail": Workload(
        name="thumbnail",
        source=ELEPHANTS,
        operation="thumbnail",
        width=200,
        height=200,
        description="1 MB JPEG to a 200x200 thumbnail: cheap image work",
    ),
    "resize": Workload(
        name="resize",
        source=ELEPHANTS,
        operation="resize",
        width=1600,
        height=900,
        description="1 MB JPEG resampled to 1600x900: image work a few times heavier",
    ),
}
WARMUP_JOBS = 20  # per workload, on every fresh node set
CEPH_DAEMONS = frozenset({"ceph-mon", "ceph-osd", "radosgw"})


class ScaleOutError(Exception):
    """A server answered a request of the benchmark other than as it should."""


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    """One configuration: the embedded service, or an API node and ``worker_nodes``."""

    name: str
    worker_nodes: int  # 0: embedded, one node does everything
    pool_size: int  # of each node that runs jobs

    @property
    def description(self) -> str:
        if not self.worker_nodes:
            return f"1 node, SQLite + local folders, pool {self.pool_size}"
        nodes = "node" if self.worker_nodes == 1 else "nodes"
        return (
            f"PostgreSQL + S3, 1 API node + {self.worker_nodes} worker {nodes}"
            f" of pool {self.pool_size}"
        )


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(name="embedded", worker_nodes=0, pool_size=2),
        Layout(name="1x2", worker_nodes=1, pool_size=2),
        Layout(name="2x1", worker_nodes=2, pool_size=1),
        Layout(name="2x2", worker_nodes=2, pool_size=2),
    )
}


class Backends(NamedTuple):
    """The running PostgreSQL server (its ``postgres`` database's URL) and RGW."""

    postgres_url: str
    rgw: RgwServer


class Node(NamedTuple):
    name: str  # "node" (embedded), "api", "worker 1", ...
    role: str
    server: RunningServer


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, each with the children it reaped
    (cutime + cstime): the difference of two reads counts processes that exited between."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        fields = _stat(current)
        if fields is not None:
            total += sum(int(x) for x in fields[11:15]) / TICKS_PER_S
            pending.extend(children(current))
    return total


def backend_pids(backends: Backends) -> dict[str, list[int]]:
    """This process's children that are the PostgreSQL server (its postmaster) and the
    Ceph daemons of the RGW of ``backends``, by backend."""
    pg_port = str(urlsplit(backends.postgres_url).port)
    rgw_frontend = f"endpoint=127.0.0.1:{urlsplit(backends.rgw.endpoint).port}"
    found: dict[str, list[int]] = {"postgres": [], "rgw": []}
    for pid in children(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        name = Path(argv[0]).name
        if name == "postgres" and pg_port in argv:
            found["postgres"].append(pid)
        elif name in CEPH_DAEMONS and "--conf" in argv:
            conf = Path(argv[argv.index("--conf") + 1])
            if rgw_frontend in conf.read_text():
                found["rgw"].append(pid)
    if len(found["postgres"]) != 1 or len(found["rgw"]) != len(CEPH_DAEMONS):
        raise ScaleOutError(f"cannot tell the backends' processes apart: {found}")
    return found


@asynccontextmanager
async def open_nodes(layout: Layout, backends: Backends | None) -> AsyncIterator[list[Node]]:
    """A fresh node set: the embedded server, or on a fresh database and bucket the API
    node, then the worker nodes (each ready before the next starts). The API node first."""
    async with AsyncExitStack() as stack:
        if not layout.worker_nodes:
            config = ServerConfig(pool_size=layout.pool_size)
            server = await stack.enter_async_context(open_server(config))
            yield [Node("node", "all", server)]
            return
        assert backends is not None
        database = await trio.to_thread.run_sync(create_database, backends.postgres_url)
        stack.push_async_callback(trio.to_thread.run_sync, drop_database, database)
        shared = {
            "DATABASE_URL": database,
            "STORAGE_URL": f"s3://scale-{uuid.uuid4().hex[:12]}?endpoint={backends.rgw.endpoint}",
            "AWS_ACCESS_KEY_ID": backends.rgw.access_key,
            "AWS_SECRET_ACCESS_KEY": backends.rgw.secret_key,
            "AWS_DEFAULT_REGION": backends.rgw.region,
        }
        nodes = []
        roles = [("api", "api", 1)] + [
            (f"worker {n}", "worker", layout.pool_size) for n in range(1, layout.worker_nodes + 1)
        ]
        for name, role, pool_size in roles:
            env = shared | {"SERVICE_ROLE": role}
            config = ServerConfig(pool_size=pool_size, extra_env=env)
            nodes.append(Node(name, role, await stack.enter_async_context(open_server(config))))
        yield nodes


class JobTiming(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: str
    latency_ms: float  # POST sent to the view saying it ended
    download_ms: float
    output_bytes: int


async def run_job(client: httpx.AsyncClient, payload: Payload) -> JobTiming:
    """One job on a connection of its own: submit, long-poll to its end, download
    (`bench.load.run_job`); a job the service did not take or serve stops the batch."""
    job = await load_job(client, payload, time.perf_counter(), [], lambda: None, download=True)
    if job.status not in TERMINAL:
        raise ScaleOutError(f"job {job.job_id or '(not submitted)'}: {job.status} {job.error}")
    return JobTiming(
        job_id=job.job_id,
        status=job.status,
        latency_ms=round(job.e2e_ms - job.download_ms, 1),
        download_ms=round(job.download_ms, 1),
        output_bytes=job.downloaded_bytes,
    )


async def run_jobs(url: str, payload: Payload, jobs: int, concurrency: int) -> list[JobTiming]:
    """``jobs`` jobs from ``concurrency`` submitters, each taking the next job when done."""
    done: list[JobTiming] = []
    left = iter(range(jobs))

    async def submitter(client: httpx.AsyncClient) -> None:
        for _ in left:  # shared: each number is taken by one submitter
            done.append(await run_job(client, payload))

    async with open_client(url, concurrency) as client:
        with trio.fail_after(BATCH_DEADLINE_S):
            async with trio.open_nursery() as nursery:
                for _ in range(min(concurrency, jobs)):
                    nursery.start_soon(submitter, client)
    return done


class NodeUse(msgspec.Struct, frozen=True, kw_only=True):
    """One node's CPU over a batch, and how many of the batch's jobs it started."""

    node: str
    role: str
    cpu_s: float  # its own process
    workers_cpu_s: float  # its descendants: the image workers
    jobs_started: int


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    config: str
    workload: str
    round: int
    jobs: int
    completed: int
    wall_s: float
    jobs_per_s: float
    nodes: list[NodeUse]
    postgres_cpu_s: float
    rgw_cpu_s: float
    client_cpu_s: float
    foreign_cpu_pct: float
    latencies_ms: list[float]
    downloads_ms: list[float]
    output_bytes: float  # median


def cpu_snapshot(nodes: Sequence[Node], backends: dict[str, list[int]]) -> dict[str, float]:
    """Cumulative CPU seconds of every process a batch involves, and of the machine."""
    found = {"client": own_cpu_s()}
    for node in nodes:
        own = process_cpu_s(node.server.pid) or 0.0
        found[node.name] = own
        found[f"{node.name} workers"] = tree_cpu_s(node.server.pid) - own
    for backend, pids in backends.items():
        found[backend] = sum(tree_cpu_s(pid) for pid in pids)
    machine = machine_cpu()
    found |= {"machine busy": machine.busy_s, "machine total": machine.total_s}
    return found


async def measure_batch(
    layout: Layout,
    nodes: Sequence[Node],
    backends: dict[str, list[int]],
    workload: str,
    payload: Payload,
    *,
    jobs: int,
    concurrency: int,
    round_: int,
) -> Batch:
    """One measured batch on the API node, from the first POST until every node is idle."""
    before = cpu_snapshot(nodes, backends)
    started = time.perf_counter()
    timings = await run_jobs(nodes[0].server.url, payload, jobs, concurrency)
    wall = time.perf_counter() - started
    client = own_cpu_s() - before["client"]  # before the idle wait, whose polling is ours
    for node in nodes:
        await wait_server_idle(node.server.pid)
    used = {k: v - before[k] for k, v in cpu_snapshot(nodes, backends).items()}
    ids = {timing.job_id for timing in timings}
    uses = [
        NodeUse(
            node=node.name,
            role=node.role,
            cpu_s=round(used[node.name], 3),
            workers_cpu_s=round(used[f"{node.name} workers"], 3),
            jobs_started=sum(e["job_id"] in ids for e in node.server.logged("job.started")),
        )
        for node in nodes
    ]
    window = used.pop("machine total")
    foreign = used.pop("machine busy") - sum(used.values())
    await delete_jobs(nodes[0].server.url, sorted(ids))  # outside the window
    return Batch(
        config=layout.name,
        workload=workload,
        round=round_,
        jobs=jobs,
        completed=sum(timing.status == "completed" for timing in timings),
        wall_s=round(wall, 3),
        jobs_per_s=round(jobs / wall, 2),
        nodes=uses,
        postgres_cpu_s=round(used.get("postgres", 0.0), 3),
        rgw_cpu_s=round(used.get("rgw", 0.0), 3),
        client_cpu_s=round(client, 3),
        foreign_cpu_pct=round(max(100 * foreign / window, 0.0), 1) if window > 0 else 0.0,
        latencies_ms=[timing.latency_ms for timing in timings],
        downloads_ms=[timing.download_ms for timing in timings],
        output_bytes=statistics.median(timing.output_bytes for timing in timings),
    )


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """One configuration and one workload over the measured batches; CPU in ms per job."""

    config: str
    description: str
    workload: str
    job: str
    jobs: int
    submitted: int
    completed: int
    jobs_per_s: Spread
    latency_ms: Summary  # every job of the batches together
    download_ms: Summary
    api_ms: Spread  # the API node's own process (embedded: the one node's)
    worker_nodes_ms: Spread  # the worker nodes' own processes together (embedded: 0)
    image_workers_ms: Spread  # every node's image worker processes together
    postgres_ms: Spread
    rgw_ms: Spread
    service_ms: Spread  # all of the above the configuration uses (embedded: no PG, RGW)
    client_ms: Spread
    foreign_cpu_pct: float  # median
    api_ceiling_jobs_per_s: float  # 1000 / api_ms median: one core's worth of API node
    split: list[list[int]]  # job.started per worker node, per batch
    batches: list[Batch]


def summarize_point(layout: Layout, workload: Workload, batches: Sequence[Batch]) -> Point:
    def per_job(seconds: list[float]) -> Spread:
        return spread([1000 * s / b.jobs for s, b in zip(seconds, batches, strict=True)])

    def nodes_cpu(role: str, workers: bool = False) -> list[float]:
        return [
            sum(u.workers_cpu_s if workers else u.cpu_s for u in b.nodes if u.role == role)
            for b in batches
        ]

    front = "all" if not layout.worker_nodes else "api"
    image = [sum(u.workers_cpu_s for u in b.nodes) for b in batches]
    api, workers = nodes_cpu(front), nodes_cpu("worker")
    service = [
        a + w + i + ((b.postgres_cpu_s + b.rgw_cpu_s) if layout.worker_nodes else 0.0)
        for a, w, i, b in zip(api, workers, image, batches, strict=True)
    ]
    api_ms = per_job(api)
    return Point(
        config=layout.name,
        description=layout.description,
        workload=workload.name,
        job=workload.job,
        jobs=batches[0].jobs,
        submitted=sum(b.jobs for b in batches),
        completed=sum(b.completed for b in batches),
        jobs_per_s=spread([b.jobs_per_s for b in batches]),
        latency_ms=summarize(x for b in batches for x in b.latencies_ms),
        download_ms=summarize(x for b in batches for x in b.downloads_ms),
        api_ms=api_ms,
        worker_nodes_ms=per_job(workers),
        image_workers_ms=per_job(image),
        postgres_ms=per_job([b.postgres_cpu_s for b in batches]),
        rgw_ms=per_job([b.rgw_cpu_s for b in batches]),
        service_ms=per_job(service),
        client_ms=per_job([b.client_cpu_s for b in batches]),
        foreign_cpu_pct=statistics.median(b.foreign_cpu_pct for b in batches),
        api_ceiling_jobs_per_s=round(ratio(1000, api_ms.median), 1),
        split=[[u.jobs_started for u in b.nodes if u.role == "worker"] for b in batches],
        batches=list(batches),
    )


class ScaleOutReport(msgspec.Struct, frozen=True, kw_only=True):
    started_at: str
    command: list[str]
    source: str
    machine: Machine
    jobs: int
    concurrency: int
    repeats: int
    warmup_jobs: int
    workloads: list[Workload]
    layouts: list[Layout]
    points: list[Point]
    idle_backends_ms_per_s: dict[str, float]  # from the embedded batches, which do not use them
    exit_codes: list[int | None]  # of every node of every round
    duration_s: float
    machine_after: Machine


class Options(argparse.Namespace):
    config: list[str] | None
    workload: list[str] | None
    jobs: int  # None from argparse when not given; parse_options sets the default
    concurrency: int
    repeats: int
    quick: bool
    corpus: Path
    output: Path | None
    quiet_below: float
    quiet_wait_s: float


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale_out", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--config", action="append", choices=list(LAYOUTS), help="repeatable")
    parser.add_argument("--workload", action="append", choices=list(WORKLOADS), help="repeatable")
    parser.add_argument("--jobs", type=int, help="jobs per measured batch (200; --quick 20)")
    parser.add_argument("--concurrency", type=int, help="concurrent submitters (50; --quick 10)")
    parser.add_argument("--repeats", type=int, help="rounds of every configuration (3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few jobs, 1 round")
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--output", type=Path, help="default bench/results/scale_out-<time>.json")
    add_quiet_options(parser)
    options = parser.parse_args(argv, namespace=Options())
    quick = options.quick
    options.jobs = options.jobs or (20 if quick else 200)
    options.concurrency = options.concurrency or (10 if quick else 50)
    options.repeats = options.repeats or (1 if quick else 3)
    if min(options.jobs, options.concurrency, options.repeats) < 1:
        parser.error("--jobs, --concurrency and --repeats must be at least 1")
    return options


async def run(options: Options, backends: Backends | None) -> ScaleOutReport:
    """Every configuration once per round, after a warm-up batch on its fresh nodes."""
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    began = time.monotonic()
    machine = describe_machine()
    layouts = [LAYOUTS[name] for name in options.config or LAYOUTS]
    workloads = [WORKLOADS[name] for name in options.workload or WORKLOADS]
    payloads = {w.name: make_payload(w, source_bytes(w, options.corpus), "raw") for w in workloads}
    pids = backend_pids(backends) if backends is not None else {}
    quiet = Quiet(below_pct=options.quiet_below, max_wait_s=options.quiet_wait_s)
    warmup = min(options.jobs, WARMUP_JOBS)
    batches: dict[tuple[str, str], list[Batch]] = {}
    exit_codes: list[int | None] = []
    progress = Progress(options.repeats * len(layouts))
    progress.message(f"scale_out: {summary_line(machine)}")
    try:
        for round_ in range(options.repeats):
            shift = round_ % len(layouts)
            for layout in layouts[shift:] + layouts[:shift]:
                progress.step(f"round {round_ + 1} {layout.name}", 2 * len(workloads))
                notes = []
                async with open_nodes(layout, backends) as nodes:
                    for workload in workloads:
                        url, payload = nodes[0].server.url, payloads[workload.name]
                        warmed = await run_jobs(url, payload, warmup, options.concurrency)
                        await delete_jobs(url, [timing.job_id for timing in warmed])
                        progress.advance()
                    for workload in workloads:
                        if options.quiet_wait_s > 0:
                            await trio.to_thread.run_sync(wait_for_quiet, quiet)
                        found = await measure_batch(
                            layout,
                            nodes,
                            pids,
                            workload.name,
                            payloads[workload.name],
                            jobs=options.jobs,
                            concurrency=options.concurrency,
                            round_=round_,
                        )
                        batches.setdefault((layout.name, workload.name), []).append(found)
                        notes.append(f"{workload.name} {found.jobs_per_s:.1f} jobs/s")
                        progress.advance()
                exit_codes += [node.server.exit_code for node in nodes]
                progress.finish_step(", ".join(notes))
    finally:
        progress.close()
    embedded = [b for (name, _), found in batches.items() if name == "embedded" for b in found]
    wall = sum(b.wall_s for b in embedded)
    idle = (
        {
            "postgres": round(1000 * sum(b.postgres_cpu_s for b in embedded) / wall, 1),
            "rgw": round(1000 * sum(b.rgw_cpu_s for b in embedded) / wall, 1),
        }
        if embedded and pids
        else {}
    )
    return ScaleOutReport(
        started_at=started_at,
        command=[Path(sys.executable).name, "-m", "bench.scale_out", *sys.argv[1:]],
        source=source_revision(),
        machine=machine,
        jobs=options.jobs,
        concurrency=options.concurrency,
        repeats=options.repeats,
        warmup_jobs=warmup,
        workloads=workloads,
        layouts=layouts,
        points=[
            summarize_point(layout, workload, batches[layout.name, workload.name])
            for layout in layouts
            for workload in workloads
        ],
        idle_backends_ms_per_s=idle,
        exit_codes=exit_codes,
        duration_s=round(time.monotonic() - began, 1),
        machine_after=describe_machine(),
    )


def _split(point: Point) -> str:
    """Jobs started per worker node, batch by batch: "101/99, 98/102"."""
    if not any(point.split):
        return "-"
    return ", ".join("/".join(str(n) for n in batch) for batch in point.split)


def _versus(point: Point, baseline: Point | None, *, cpu: bool) -> str:
    """jobs/s as a multiple of the embedded service's, or the service's ms/job over its."""
    if baseline is None or point is baseline:
        return "-"
    if cpu:
        return f"{point.service_ms.median - baseline.service_ms.median:+.1f}"
    return f"{point.jobs_per_s.median / baseline.jobs_per_s.median:.2f}x"


def markdown(report: ScaleOutReport) -> str:
    """The throughput table and the CPU table, with what was measured and how."""
    base = {p.workload: p for p in report.points if p.config == "embedded"}
    lines = [
        f"Measured {report.started_at} on {summary_line(report.machine)}; imgjobs {report.source}.",
        f"{report.jobs} jobs per batch from {report.concurrency} concurrent submitters, each"
        " POST /jobs (raw image/jpeg), GET /jobs/{id}?wait=30 and the download, on the API"
        " node; fresh nodes (and database and bucket) per configuration and round, after a"
        f" warm-up of {report.warmup_jobs} jobs; {report.repeats} rounds, configurations"
        " interleaved. jobs/s: median [min-max] of the rounds; latency (POST to completed):"
        " every job of the rounds together.",
        "",
        "| configuration | workload | jobs/s | vs embedded | latency p50 / p95 ms"
        " | download p50 ms | jobs started per worker node | completed |",
        "|---|---|--:|--:|--:|--:|---|--:|",
    ]
    for p in report.points:
        out_kb = statistics.median(b.output_bytes for b in p.batches) / 1000
        cells = [
            f"{p.config}: {p.description}",
            f"{p.workload} ({p.job}, {out_kb:.0f} KB out)",
            p.jobs_per_s.cell(1),
            _versus(p, base.get(p.workload), cpu=False),
            f"{p.latency_ms.p50:.0f} / {p.latency_ms.p95:.0f}",
            f"{p.download_ms.p50:.1f}",
            _split(p),
            f"{p.completed}/{p.submitted}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "CPU per job in ms (utime + stime from /proc, first POST to every node idle), medians"
        " of the rounds; service total [min-max]: every process the configuration uses (the"
        " embedded one uses neither PostgreSQL nor RGW: their figures in brackets there are"
        " their idle upkeep). API node ceiling: 1000 / its ms per job.",
        "",
        "| configuration | workload | API node (embedded: the node) | worker nodes"
        " | image workers | PostgreSQL | RGW (mon + osd + radosgw) | service total"
        " | vs embedded | client | other CPU % | API node ceiling jobs/s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in report.points:
        idle = "({:.2f})" if p.config == "embedded" else "{:.2f}"
        cells = [
            p.config,
            p.workload,
            f"{p.api_ms.median:.2f}",
            f"{p.worker_nodes_ms.median:.2f}" if p.config != "embedded" else "-",
            f"{p.image_workers_ms.median:.1f}",
            idle.format(p.postgres_ms.median),
            idle.format(p.rgw_ms.median),
            p.service_ms.cell(1),
            _versus(p, base.get(p.workload), cpu=True),
            f"{p.client_ms.median:.2f}",
            f"{p.foreign_cpu_pct:.0f}",
            f"{p.api_ceiling_jobs_per_s:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if idle_rates := report.idle_backends_ms_per_s:
        lines += [
            "",
            f"Idle (during the embedded batches), PostgreSQL used {idle_rates['postgres']:.1f}"
            f" and RGW {idle_rates['rgw']:.1f} ms of CPU per second.",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    output = options.output or results_dir() / f"scale_out-{stamp()}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    shared = any(LAYOUTS[name].worker_nodes for name in options.config or LAYOUTS)
    with ExitStack() as stack:
        backends = None
        if shared:  # here, in the main thread: RGW's daemons stop when it ends
            print("scale_out: starting PostgreSQL and RGW", file=sys.stderr)
            backends = Backends(
                stack.enter_context(running_postgres()), stack.enter_context(running_rgw())
            )
        report = trio.run(run, options, backends)
    print(markdown(report))
    write_json(output, report)
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()

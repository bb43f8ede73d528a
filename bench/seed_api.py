"""The seed's own API path: N concurrent base64 JSON jobs, each polled with plain GETs.

Issue 12's "seed API" rows: pool 2, 50 jobs at once through the seed's upload form, a JSON
body with the seed's five fields (``image_data`` in base64, ``operation``, ``width``,
``height``, ``output_format``), each job's client then polling ``GET /jobs/{id}`` (no
``?wait``) 10 ms after the 202, then after 20, 40, ... ms, doubling up to 250 ms between
polls (``--first-poll-ms``, ``--max-poll-ms``; the seed's own test client doubled from 10
ms), until the job is completed or failed. Each job has a connection of its own
(``bench.http.LeanConnection``, so the client costs the shared cores little).

The two photos (none of the corpus's is a 20 or 24 MP camera JPEG; ``bench.seed_photos``
makes both from corpus photos in a temporary folder, the same bytes every run):

- ``20mp-thumbnail``: ``plasma__Path__2560x1600.jpg`` (a forest path, Olympus E-M1) cut to
  3:2 and resized (LANCZOS) to 5472x3648 (20.0 MP), baseline JPEG q85: 3.27 MB, a 4.35 MB
  JSON body; ``thumbnail`` 200x200.
- ``24mp-resize``: ``mate__Storm.jpg`` (a storm sky, Canon EOS 400D) resized to 6000x4000
  (24.0 MP), JPEG q64 with optimized Huffman tables: 0.38 MB, a 0.51 MB JSON body;
  ``resize`` 800x600.

One server per source tree (``--app-root label=path``, repeatable, e.g. a ``git worktree``
of an older commit for "before" and ``after=.``; default this checkout; ``bench.server``),
all started side by side with ``--pool-size`` workers and idle when not measured. Per case:
a warm-up batch on each (spawns the workers; not counted), then ``--repeats`` rounds. A
round is the in-process ceiling (``bench.ceiling``: ``imaging.process`` of this checkout in
``--pool-size`` plain processes, ``--ceiling-duration-s``) and then one batch per tree, in
the order given on even rounds and reversed on odd ones; each starts with every server
idle. Per batch: jobs/s = completed jobs / (first POST to last terminal view), divided by
the ceiling of its round; server CPU per job = the hypercorn process's utime + stime from
idle before to idle after (the client is not in it; ``bench.floor.wait_server_idle``);
worker CPU per job = its child processes'; polls per job. The batch's jobs are deleted
afterwards, outside the window. Figures: median [min-max] over rounds.

Run from the project root (about 3 minutes with the defaults and two trees)::

    python -m bench.seed_api                                # this checkout, 5 rounds
    python -m bench.seed_api --app-root before=/tmp/imgjobs-old --app-root after=.
    make bench-seed BENCH_ARGS="--repeats 7"

Prints a Markdown table on stdout (progress on stderr) and writes every batch, the
photos, the machine and each tree's revision to ``bench/results/seed_api-<time>.json``
(``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import trio

from bench.ceiling import DEFAULT_DURATION_S, CeilingPoint, run_ceiling
from bench.floor import BATCH_DEADLINE_S, children_cpu_s, wait_server_idle
from bench.http import LeanConnection
from bench.load import LEAN_ERRORS, TERMINAL, make_payload
from bench.machine import Machine, describe_machine, summary_line
from bench.overhead import delete_jobs
from bench.procs import Quiet, add_quiet_options, machine_cpu, own_cpu_s, wait_for_quiet
from bench.report import results_dir, source_revision, stamp, write_json
from bench.seed_photos import CASES, PhotoRecipe, make_photo
from bench.server import ROOT, AppTree, RunningServer, ServerConfig, open_server, parse_app_tree
from bench.stats import Progress, Spread, Summary, ratio, spread, summarize
from bench.workloads import Workload, corpus_dir

__all__ = ["SeedApiReport", "main", "markdown", "parse_options", "run"]

POOL_SIZE = 2
OUTPUT_FORMAT = "jpeg"


class Photo(msgspec.Struct, frozen=True, kw_only=True):
    recipe: PhotoRecipe
    image_bytes: int
    body_bytes: int  # the JSON body as sent


class SeedJob(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # completed, failed, or what went wrong
    e2e_ms: float  # POST sent to the terminal view read
    done_s: float  # from the batch's start
    polls: int


class SeedBatch(msgspec.Struct, frozen=True, kw_only=True):
    tree: str
    round: int
    jobs: int
    completed: int
    failure_samples: list[str]
    wall_s: float  # first POST sent to last terminal view read
    jobs_per_s: float
    ceiling_images_per_s: float  # the ceiling of its round
    efficiency: float
    server_cpu_s: float
    workers_cpu_s: float
    client_cpu_s: float
    polls: int
    e2e_ms: Summary
    foreign_cpu_pct: float  # other processes' share of the machine meanwhile: noise


class TreeFigures(msgspec.Struct, frozen=True, kw_only=True):
    """One tree on one case: medians [min-max] over its batches."""

    tree: str
    source: str
    efficiency: Spread
    jobs_per_s: Spread
    server_ms_per_job: Spread
    workers_ms_per_job: Spread
    polls_per_job: Spread
    e2e_p50_ms: Spread
    failures: int


class CaseReport(msgspec.Struct, frozen=True, kw_only=True):
    photo: Photo
    ceiling: list[CeilingPoint]  # one per round
    figures: list[TreeFigures]
    batches: list[SeedBatch]


class SeedApiReport(msgspec.Struct, frozen=True, kw_only=True):
    started_at: str
    command: list[str]
    source: str  # the bench code's checkout
    machine: Machine
    pool_size: int
    jobs: int
    repeats: int
    poll_ms: tuple[float, float]  # first interval, doubling up to the second
    cases: list[CaseReport]
    exit_codes: dict[str, int | None]
    machine_after: Machine


class Options(argparse.Namespace):
    case: list[str] | None
    jobs: int
    pool_size: int
    repeats: int
    first_poll_ms: float
    max_poll_ms: float
    ceiling_duration_s: float
    app_root: list[AppTree] | None
    corpus: Path
    output: Path | None
    quiet_below: float
    quiet_wait_s: float


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed_api", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable")
    parser.add_argument("--jobs", type=int, default=50, help="concurrent jobs per batch")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE)
    parser.add_argument("--repeats", type=int, default=5, help="rounds per case")
    parser.add_argument("--first-poll-ms", type=float, default=10.0)
    parser.add_argument("--max-poll-ms", type=float, default=250.0)
    parser.add_argument("--ceiling-duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument(
        "--app-root",
        action="append",
        type=parse_app_tree,
        metavar="LABEL=PATH",
        help="serve imgjobs from this source tree (repeatable; default: this checkout)",
    )
    add_quiet_options(parser)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--output", type=Path, help="default bench/results/seed_api-<time>.json")
    options = parser.parse_args(argv, namespace=Options())
    if min(options.jobs, options.pool_size, options.repeats) < 1:
        parser.error("--jobs, --pool-size and --repeats must be at least 1")
    if not 0 < options.first_poll_ms <= options.max_poll_ms:
        parser.error("expected 0 < --first-poll-ms <= --max-poll-ms")
    labels = [tree.label for tree in options.app_root or []]
    if len(set(labels)) < len(labels):
        parser.error("every --app-root needs a label of its own")
    return options


async def run_seed_job(
    url: str, body: bytes, t0: float, ids: list[str], poll_s: tuple[float, float]
) -> SeedJob:
    """POST the JSON body, then poll ``GET /jobs/{id}`` until the job ends, on one
    connection; the job's id is appended to ``ids``."""
    first, most = poll_s
    connection = LeanConnection(url)
    started = time.perf_counter()
    polls = 0
    status = "unknown"
    try:
        answer = await connection.request(
            "POST", "/jobs", body=body, content_type="application/json"
        )
        if answer.status_code != 202:
            status = f"POST /jobs answered {answer.status_code}"
        else:
            job_id = str(answer.json()["job_id"])
            ids.append(job_id)
            delay = first
            while status not in TERMINAL:
                await trio.sleep(delay)
                polled = await connection.request("GET", f"/jobs/{job_id}")
                polls += 1
                if polled.status_code != 200:
                    status = f"GET /jobs/{{id}} answered {polled.status_code}"
                    break
                status = str(polled.json()["status"])
                delay = min(2 * delay, most)
    except LEAN_ERRORS as exc:
        status = repr(exc)
    finally:
        await connection.aclose()
    done = time.perf_counter()
    return SeedJob(status=status, e2e_ms=1000 * (done - started), done_s=done - t0, polls=polls)


async def run_seed_batch(
    server: RunningServer,
    body: bytes,
    jobs: int,
    poll_s: tuple[float, float],
    *,
    tree: str,
    round_: int,
    ceiling: float,
) -> SeedBatch:
    """``jobs`` seed jobs at once on an idle server, and the CPU each side used; the jobs
    are deleted afterwards (not in the figures)."""
    ids: list[str] = []
    found: list[SeedJob] = []
    server_before = await wait_server_idle(server.pid)
    machine_before = machine_cpu()
    workers_before = children_cpu_s(server.pid)
    client_before = own_cpu_s()
    t0 = time.perf_counter()

    async def one() -> None:
        found.append(await run_seed_job(server.url, body, t0, ids, poll_s))

    with trio.fail_after(BATCH_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for _ in range(jobs):
                nursery.start_soon(one)
    client = own_cpu_s() - client_before
    server_cpu = await wait_server_idle(server.pid) - server_before
    workers = sum(
        cpu - workers_before.get(pid, 0.0) for pid, cpu in children_cpu_s(server.pid).items()
    )
    machine_after = machine_cpu()
    await delete_jobs(server.url, ids)
    window = machine_after.total_s - machine_before.total_s
    busy = machine_after.busy_s - machine_before.busy_s
    completed = [job for job in found if job.status == "completed"]
    wall = max(job.done_s for job in found)
    jobs_per_s = len(completed) / wall if wall > 0 else math.nan
    return SeedBatch(
        tree=tree,
        round=round_,
        jobs=jobs,
        completed=len(completed),
        failure_samples=[job.status for job in found if job.status != "completed"][:5],
        wall_s=round(wall, 4),
        jobs_per_s=round(jobs_per_s, 3),
        ceiling_images_per_s=ceiling,
        efficiency=round(ratio(jobs_per_s, ceiling), 4),
        server_cpu_s=round(server_cpu, 3),
        workers_cpu_s=round(workers, 3),
        client_cpu_s=round(client, 3),
        polls=sum(job.polls for job in found),
        e2e_ms=summarize(job.e2e_ms for job in completed),
        foreign_cpu_pct=round(max(100 * (busy - server_cpu - workers - client) / window, 0.0), 1)
        if window > 0
        else 0.0,
    )


@asynccontextmanager
async def open_servers(
    trees: Sequence[AppTree], pool_size: int
) -> AsyncIterator[dict[str, RunningServer]]:
    """One server per tree, side by side, by label; stopped in the reverse order."""
    async with AsyncExitStack() as stack:
        servers = {}
        for tree in trees:
            config = ServerConfig(pool_size=pool_size, app_root=tree.root)
            servers[tree.label] = await stack.enter_async_context(open_server(config))
        yield servers


def figures(tree: AppTree, batches: Sequence[SeedBatch]) -> TreeFigures:
    mine = [batch for batch in batches if batch.tree == tree.label]

    def per_job(seconds: float, batch: SeedBatch) -> float:
        return 1000 * seconds / max(batch.completed, 1)

    return TreeFigures(
        tree=tree.label,
        source=source_revision(Path(tree.root)),
        efficiency=spread([b.efficiency for b in mine]),
        jobs_per_s=spread([b.jobs_per_s for b in mine]),
        server_ms_per_job=spread([per_job(b.server_cpu_s, b) for b in mine]),
        workers_ms_per_job=spread([per_job(b.workers_cpu_s, b) for b in mine]),
        polls_per_job=spread([b.polls / b.jobs for b in mine]),
        e2e_p50_ms=spread([b.e2e_ms.p50 for b in mine]),
        failures=sum(b.jobs - b.completed for b in mine),
    )


async def measure_case(
    options: Options,
    trees: Sequence[AppTree],
    servers: dict[str, RunningServer],
    photo: Path,
    recipe: PhotoRecipe,
    progress: Progress,
) -> CaseReport:
    """A warm-up batch per tree, then the rounds: the ceiling, then a batch per tree."""
    workload = Workload(
        name=recipe.case,
        source=photo.name,
        operation=recipe.operation,
        width=recipe.width,
        height=recipe.height,
        description=f"{recipe.size[0]}x{recipe.size[1]} JPEG from {recipe.corpus_photo}",
    )
    data = await trio.Path(photo).read_bytes()
    body = make_payload(workload, data, "json", output_format=OUTPUT_FORMAT).content
    poll_s = (options.first_poll_ms / 1000, options.max_poll_ms / 1000)
    quiet = Quiet(below_pct=options.quiet_below, max_wait_s=options.quiet_wait_s)

    async def batch(tree: AppTree, round_: int, ceiling: float) -> SeedBatch:
        if quiet.max_wait_s > 0:
            await trio.to_thread.run_sync(wait_for_quiet, quiet)
        for server in servers.values():
            await wait_server_idle(server.pid)
        found = await run_seed_batch(
            servers[tree.label],
            body,
            options.jobs,
            poll_s,
            tree=tree.label,
            round_=round_,
            ceiling=ceiling,
        )
        progress.finish_step(
            f"{found.jobs_per_s:.1f} jobs/s, {found.efficiency:.2f} of the ceiling,"
            f" server {1000 * found.server_cpu_s / max(found.completed, 1):.0f} ms/job"
        )
        return found

    for tree in trees:
        progress.step(f"{recipe.case}: warm-up {tree.label}")
        await batch(tree, -1, math.nan)
    ceiling: list[CeilingPoint] = []
    batches: list[SeedBatch] = []
    for round_ in range(options.repeats):
        progress.step(f"{recipe.case} round {round_ + 1}: ceiling at {options.pool_size}")
        ceiling += await trio.to_thread.run_sync(
            lambda: run_ceiling(
                [workload],
                [options.pool_size],
                corpus=photo.parent,
                duration_s=options.ceiling_duration_s,
                quiet=quiet if quiet.max_wait_s > 0 else None,
            )
        )
        progress.finish_step(f"{ceiling[-1].images_per_s:.1f} images/s")
        for tree in trees if round_ % 2 == 0 else trees[::-1]:
            progress.step(f"{recipe.case} round {round_ + 1}: {tree.label}")
            batches.append(await batch(tree, round_, ceiling[-1].images_per_s))
    return CaseReport(
        photo=Photo(recipe=recipe, image_bytes=len(data), body_bytes=len(body)),
        ceiling=ceiling,
        figures=[figures(tree, batches) for tree in trees],
        batches=batches,
    )


async def run(options: Options) -> SeedApiReport:
    trees = options.app_root or [AppTree("imgjobs", str(ROOT))]
    recipes = [CASES[name] for name in options.case or CASES]
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = describe_machine()
    steps = len(recipes) * (len(trees) + options.repeats * (1 + len(trees)))
    progress = Progress(steps)
    cases: list[CaseReport] = []
    try:
        with tempfile.TemporaryDirectory(prefix="imgjobs-seed-api-") as scratch:
            photos = [
                await trio.to_thread.run_sync(make_photo, recipe, options.corpus, Path(scratch))
                for recipe in recipes
            ]
            async with open_servers(trees, options.pool_size) as servers:
                for recipe, photo in zip(recipes, photos, strict=True):
                    found = await measure_case(options, trees, servers, photo, recipe, progress)
                    cases.append(found)
        exit_codes = {label: server.exit_code for label, server in servers.items()}
    finally:
        progress.close()
    return SeedApiReport(
        started_at=started_at,
        command=[Path(sys.executable).name, "-m", "bench.seed_api", *sys.argv[1:]],
        source=source_revision(),
        machine=machine,
        pool_size=options.pool_size,
        jobs=options.jobs,
        repeats=options.repeats,
        poll_ms=(options.first_poll_ms, options.max_poll_ms),
        cases=cases,
        exit_codes=exit_codes,
        machine_after=describe_machine(),
    )


def markdown(report: SeedApiReport) -> str:
    first, most = report.poll_ms
    lines = [
        f"Measured {report.started_at} on {summary_line(report.machine)}.",
        f"Pool {report.pool_size}, {report.jobs} concurrent jobs per batch as base64 JSON,"
        f" each polled with plain GETs every {first:g} ms doubling to {most:g} ms;"
        f" {report.repeats} rounds of (ceiling, a batch per tree), medians [min-max].",
        "",
        "| upload | tree | server CPU ms/job | worker CPU ms/job | jobs/s | jobs/s ÷ ceiling"
        " | ceiling img/s | polls/job | e2e p50 ms | failures |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case in report.cases:
        recipe = case.photo.recipe
        megapixels = recipe.size[0] * recipe.size[1] / 1e6
        upload = (
            f"{megapixels:.0f} MP JPEG, {case.photo.body_bytes / 1e6:.2f} MB as base64 JSON,"
            f" {recipe.operation} {recipe.width}x{recipe.height}"
        )
        ceiling = spread([point.images_per_s for point in case.ceiling])
        for f in case.figures:
            lines.append(
                f"| {upload} | {f.tree} | {f.server_ms_per_job.cell(0)}"
                f" | {f.workers_ms_per_job.cell(0)} | {f.jobs_per_s.cell(1)}"
                f" | {f.efficiency.cell(2)} | {ceiling.cell(1)} | {f.polls_per_job.cell(1)}"
                f" | {f.e2e_p50_ms.cell(0)} | {f.failures} |"
            )
    trees = {f.tree: f.source for case in report.cases for f in case.figures}
    lines += ["", "Trees: " + "; ".join(f"{label} = {src}" for label, src in trees.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    report = trio.run(run, options)
    print(markdown(report))
    path = options.output or results_dir() / f"seed_api-{stamp()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    print(f"wrote {path}", file=sys.stderr)
    failed = [code for code in report.exit_codes.values() if code != 0]
    if failed:
        sys.exit(f"a server exited with {failed} instead of 0")


if __name__ == "__main__":
    main()

"""imgjobs against thumbor on the same images and operations, measured in the same run.

thumbor (its own venv: it needs stock Pillow) runs as one single-process instance per
core, each on a socket this benchmark binds on 127.0.0.1 and hands over (``thumbor
--fd``), with the file loader rooted at a scratch folder of symlinks to the corpus files
(plus the 1x1 PNG), no storage, no result storage, ``ALLOW_UNSAFE_URL``, JPEG quality 85
baseline like imgjobs. N concurrent ``GET``s are round-robined over the instances. URLs:

- imgjobs ``resize WxH`` (exact size, aspect not kept) -> ``/unsafe/WxH/filters:stretch()/F``,
  thumbor's resize without cropping. Plain ``/unsafe/WxH/F`` crops to fill first (same
  output size, less image resampled): ``--thumbor-resize crop`` measures that instead.
- imgjobs ``thumbnail WxH`` (fit inside, never enlarged) -> ``/unsafe/fit-in/WxH/F``.

imgjobs is measured on a fresh server per batch with pool size = cores, the same N, and a
raw upload (it has to receive the image; thumbor reads a local file). **imgjobs' cycle
includes the download**: each job is ``POST /jobs``, ``GET /jobs/{id}?wait=30`` until it
ends, then ``GET /jobs/{id}/download`` with the whole result read on the same connection,
and only then counts as done (what a user does; thumbor's one GET returns the image). No
API probes run beside imgjobs' batches (``bench.pool_sizes``' status, health and 1 MB
submit probes would be extra work thumbor does not get); ``--probes`` adds them.

Each workload gets ``--repeats`` rounds; a round is one thumbor batch and one imgjobs batch
per source tree (``--app-root label=path``, repeatable, e.g. a ``git worktree`` of an older
commit for "before"; default this checkout; see ``bench.server``), in the order thumbor,
trees... on even rounds and reversed on odd ones, so slow drifts of the shared machine hit
all alike. Per workload and tree: jobs/s medians [min-max] over rounds, the ratio of the
medians, and the pair ratios [min-max] (each imgjobs batch to the thumbor batch of its
round). Also shown: the in-process ceiling at the core count (once per workload) and the
PSNR of both outputs (as served) against full decode + LANCZOS. Each measurement first
waits (at most ``--quiet-wait-s``) for the shared machine to be below ``--quiet-below`` %
busy. Writes ``bench/results/peers-<time>.json``.

Run from the project root::

    make bench-peers                      # builds .venv-thumbor (thumbor 7.8.0), runs this
    python -m bench.peers --thumbor .venv-thumbor/bin/thumbor [--jobs 50] [--workload W]...
    python -m bench.peers --app-root before=/tmp/imgjobs-old --app-root after=. --repeats 3
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import msgspec
import trio

from bench.ceiling import DEFAULT_DURATION_S, CeilingPoint, ceiling_at, run_ceiling
from bench.machine import Machine, describe_machine, summary_line
from bench.procs import Quiet, process_cpu_s, process_memory_mib, wait_for_quiet
from bench.report import PoolPoint, results_dir, source_revision, stamp, write_json
from bench.runs import BATCH_DEADLINE_S, measure_service
from bench.server import ROOT, AppTree, parse_app_tree
from bench.stats import Progress, Spread, Summary, ratio, spread, summarize
from bench.workloads import (
    DEFAULT_WORKLOADS,
    WORKLOADS,
    Workload,
    corpus_dir,
    reference_psnr,
    source_bytes,
    source_path,
)

__all__ = ["PeerPoint", "PeerReport", "TreePoint", "main", "thumbor_path"]

START_DEADLINE_S = 60.0
CONFIG = """\
LOADER = 'thumbor.loaders.file_loader'
FILE_LOADER_ROOT_PATH = {root!r}
STORAGE = 'thumbor.storages.no_storage'
RESULT_STORAGE = None
ALLOW_UNSAFE_URL = True
QUALITY = 85
PROGRESSIVE_JPEG = False
RESPECT_ORIENTATION = True
AUTO_WEBP = False
ENGINE_THREADPOOL_SIZE = 0
NON_BLOCKING_SOCKETS = True
"""


class ThumborRun(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    instances: int
    jobs: int
    failures: int
    failure_samples: list[str]
    wall_s: float
    jobs_per_s: float
    latency_ms: Summary
    cpu_pct: float  # thumbor processes, % of all cores over the batch
    peak_rss_mib: float  # largest VmHWM of one instance
    psnr_db: float


class TreePoint(msgspec.Struct, frozen=True, kw_only=True):
    """imgjobs from one source tree on one workload, over the rounds."""

    tree: str  # its label
    source: str  # its commit, and whether app/ or imaging/ had changes on top
    imgjobs: PoolPoint  # the median round; runs_jobs_per_s holds every round's jobs/s
    jobs_per_s: Spread
    psnr_db: float
    over_thumbor: float  # ratio of the medians
    pair_ratios: Spread  # each round's imgjobs batch to that round's thumbor batch


class PeerPoint(msgspec.Struct, frozen=True, kw_only=True):
    workload: str
    job: str
    thumbor: ThumborRun  # the median round
    thumbor_jobs_per_s: Spread
    thumbor_runs: list[ThumborRun]
    ceiling_images_per_s: float
    trees: list[TreePoint]


class PeerReport(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # the bench code's checkout
    machine: Machine
    thumbor_version: str
    jobs: int
    repeats: int
    imgjobs_downloads: bool
    imgjobs_probes: bool
    ceiling: list[CeilingPoint]
    points: list[PeerPoint]


def thumbor_path(workload: Workload, mode: str) -> str:
    name = workload.source or "onepixel.png"
    size = f"{workload.width}x{workload.height}"
    if workload.operation == "thumbnail":
        return f"/unsafe/fit-in/{size}/{name}"
    return (
        f"/unsafe/{size}/{name}" if mode == "crop" else f"/unsafe/{size}/filters:stretch()/{name}"
    )


class Thumbor(msgspec.Struct, frozen=True):
    url: str
    pid: int


@asynccontextmanager
async def open_thumbors(executable: str, root: Path, count: int) -> AsyncIterator[list[Thumbor]]:
    """``count`` thumbor processes, each on its own loopback socket."""
    config = root.parent / "thumbor.conf"
    config.write_text(CONFIG.format(root=str(root)))
    processes: list[trio.Process] = []
    started: list[Thumbor] = []
    try:
        for _ in range(count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen(128)
                listener.setblocking(False)
                fd = listener.fileno()
                command = [executable, "--fd", str(fd), "-c", str(config), "-l", "error"]
                process = await trio.lowlevel.open_process(
                    command, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                )
                processes.append(process)
                url = f"http://127.0.0.1:{listener.getsockname()[1]}"
                started.append(Thumbor(url, process.pid))
            # Closed here: thumbor has its own copy, so if it dies, connecting fails fast.
        yield started
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                if process.returncode is None:
                    process.terminate()
            with trio.move_on_after(15):
                for process in processes:
                    await process.wait()
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def _get(client: httpx.AsyncClient, url: str) -> tuple[float, bytes, str]:
    started = time.perf_counter()
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return time.perf_counter() - started, b"", f"{url}: {exc!r}"
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or not response.content:
        return elapsed, b"", f"{url}: {response.status_code} {response.text[:120]}"
    return elapsed, response.content, ""


async def measure_thumbor(
    executable: str, root: Path, workload: Workload, data: bytes, jobs: int, mode: str
) -> ThumborRun:
    """Warm each instance up twice, then ``jobs`` concurrent GETs round-robin."""
    cores = len(os.sched_getaffinity(0))
    path = thumbor_path(workload, mode)
    connections = jobs + cores
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    results: list[tuple[float, bytes, str]] = []
    async with (
        open_thumbors(executable, root, cores) as thumbors,
        httpx.AsyncClient(limits=limits, timeout=60.0, trust_env=False) as client,
    ):
        with trio.fail_after(START_DEADLINE_S):  # the first request also waits for start-up
            for thumbor in thumbors * 2:
                _, _, error = await _get(client, thumbor.url + path)
                if error:
                    raise RuntimeError(f"thumbor did not serve {path}: {error}")
        cpu_before = [process_cpu_s(t.pid) or 0.0 for t in thumbors]
        before = time.perf_counter()

        async def one(index: int) -> None:
            results.append(await _get(client, thumbors[index % len(thumbors)].url + path))

        with trio.fail_after(BATCH_DEADLINE_S):
            async with trio.open_nursery() as nursery:
                for index in range(jobs):
                    nursery.start_soon(one, index)
        wall = time.perf_counter() - before
        cpu = sum(
            (process_cpu_s(t.pid) or 0.0) - b for t, b in zip(thumbors, cpu_before, strict=True)
        )
        peak = max((process_memory_mib(t.pid) or (0.0, 0.0))[1] for t in thumbors)
    errors = [error for _, _, error in results if error]
    served = next((body for _, body, error in results if not error), b"")
    psnr = reference_psnr(workload, data, served) if served and mode != "crop" else math.nan
    return ThumborRun(
        url=path,
        instances=cores,
        jobs=jobs,
        failures=len(errors),
        failure_samples=errors[:5],
        wall_s=round(wall, 3),
        jobs_per_s=round((jobs - len(errors)) / wall, 2),
        latency_ms=summarize(1000 * t for t, _, error in results if not error),
        cpu_pct=round(100 * cpu / (wall * cores), 1),
        peak_rss_mib=round(peak, 1),
        psnr_db=round(psnr, 2),
    )


def _scratch_root(folder: Path, workloads: Sequence[Workload], corpus: Path) -> Path:
    """thumbor's FILE_LOADER_ROOT_PATH: symlinks to the corpus files and the 1x1 PNG."""
    root = folder / "images"
    root.mkdir()
    for workload in workloads:
        target = source_path(workload, corpus, folder)
        link = root / (workload.source or target.name)
        if not link.exists():
            link.symlink_to(target.resolve())
    return root


def table(report: PeerReport) -> str:
    lines = [
        "| workload | job | imgjobs tree | imgjobs jobs/s | thumbor jobs/s | imgjobs / thumbor"
        " | pair ratios | ceiling img/s | latency p50 ms imgjobs / thumbor"
        " | PSNR dB imgjobs / thumbor |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in report.points:
        for t in p.trees:
            lines.append(
                f"| {p.workload} | {p.job} | {t.tree} | {t.jobs_per_s.cell(1)}"
                f" | {p.thumbor_jobs_per_s.cell(1)} | {t.over_thumbor:.2f}x"
                f" | {t.pair_ratios.low:.2f}-{t.pair_ratios.high:.2f}x"
                f" | {p.ceiling_images_per_s:.1f} | {t.imgjobs.e2e_ms.p50:.0f} /"
                f" {p.thumbor.latency_ms.p50:.0f} | {t.psnr_db:.1f} / {p.thumbor.psnr_db:.1f} |"
            )
    urls = {p.workload: p.thumbor.url for p in report.points}
    lines += ["", "thumbor URLs: " + ", ".join(f"{w} `{u}`" for w, u in urls.items())]
    return "\n".join(lines)


def _median_index(values: Sequence[float]) -> int:
    """The index of the median value (the lower one of an even count)."""
    ranked = sorted(range(len(values)), key=lambda i: values[i])
    return ranked[(len(ranked) - 1) // 2]


async def run_workload(
    args: argparse.Namespace,
    workload: Workload,
    root: Path,
    ceiling: list[CeilingPoint],
    progress: Progress,
) -> PeerPoint:
    """``args.repeats`` rounds of thumbor and every tree, alternating the order."""
    cores = len(os.sched_getaffinity(0))
    data = source_bytes(workload, args.corpus)
    quiet = Quiet(below_pct=args.quiet_below, max_wait_s=args.quiet_wait_s)
    trees: list[AppTree] = args.app_root
    thumbor_runs: list[ThumborRun] = []
    runs: dict[str, list[PoolPoint]] = {tree.label: [] for tree in trees}
    psnr: dict[str, float] = {}

    async def settle() -> None:
        if quiet.max_wait_s > 0:
            await trio.to_thread.run_sync(wait_for_quiet, quiet)

    for round_number in range(args.repeats):
        order: list[AppTree | None] = [None, *trees]
        for tree in order if round_number % 2 == 0 else order[::-1]:
            await settle()
            if tree is None:
                progress.step(f"{workload.name}: thumbor x{cores}")
                thumbor = await measure_thumbor(
                    args.thumbor, root, workload, data, args.jobs, args.thumbor_resize
                )
                thumbor_runs.append(thumbor)
                progress.finish_step(f"{thumbor.jobs_per_s:.1f} jobs/s")
                continue
            progress.step(f"{workload.name}: imgjobs {tree.label} pool {cores}", args.jobs)
            point, outputs = await measure_service(
                workload,
                data,
                pool_size=cores,
                jobs=args.jobs,
                upload="raw",
                ceiling=ceiling,
                cores=cores,
                on_done=lambda _job: progress.advance(),
                keep_outputs=tree.label not in psnr,
                download=True,
                app_root=tree.root,
                probes=args.probes,
            )
            runs[tree.label].append(point)
            if outputs:
                psnr[tree.label] = round(reference_psnr(workload, data, outputs[0]), 2)
            progress.finish_step(f"{point.jobs_per_s:.1f} jobs/s, {point.failures} failures")
    thumbor_rates = [run.jobs_per_s for run in thumbor_runs]
    points = []
    for tree in trees:
        rates = [run.jobs_per_s for run in runs[tree.label]]
        median = runs[tree.label][_median_index(rates)]
        if len(rates) > 1:
            median = msgspec.structs.replace(median, runs_jobs_per_s=rates)
        points.append(
            TreePoint(
                tree=tree.label,
                source=source_revision(Path(tree.root)),
                imgjobs=median,
                jobs_per_s=spread(rates),
                psnr_db=psnr.get(tree.label, math.nan),
                over_thumbor=round(
                    ratio(statistics.median(rates), statistics.median(thumbor_rates)), 3
                ),
                pair_ratios=spread(
                    [ratio(a, b) for a, b in zip(rates, thumbor_rates, strict=True)]
                ),
            )
        )
    return PeerPoint(
        workload=workload.name,
        job=workload.job,
        thumbor=thumbor_runs[_median_index(thumbor_rates)],
        thumbor_jobs_per_s=spread(thumbor_rates),
        thumbor_runs=thumbor_runs,
        ceiling_images_per_s=ceiling_at(ceiling, workload.name, cores),
        trees=points,
    )


async def run(args: argparse.Namespace, progress: Progress) -> PeerReport:
    cores = len(os.sched_getaffinity(0))
    workloads = [WORKLOADS[name] for name in args.workload or DEFAULT_WORKLOADS]
    ceiling: list[CeilingPoint] = []
    points: list[PeerPoint] = []
    quiet = Quiet(below_pct=args.quiet_below, max_wait_s=args.quiet_wait_s)
    with tempfile.TemporaryDirectory(prefix="imgjobs-peers-") as scratch:
        root = _scratch_root(Path(scratch), workloads, args.corpus)
        for workload in workloads:
            if not args.no_ceiling:
                progress.step(f"{workload.name}: ceiling at {cores} processes")
                measure = partial(
                    run_ceiling,
                    [workload],
                    [cores],
                    corpus=args.corpus,
                    duration_s=args.ceiling_duration_s,
                    quiet=quiet if quiet.max_wait_s > 0 else None,
                )
                ceiling += await trio.to_thread.run_sync(measure)
                progress.finish_step()
            points.append(await run_workload(args, workload, root, ceiling, progress))
    return PeerReport(
        source=source_revision(),
        machine=describe_machine(),
        thumbor_version=args.thumbor_version,
        jobs=args.jobs,
        repeats=args.repeats,
        imgjobs_downloads=True,
        imgjobs_probes=args.probes,
        ceiling=ceiling,
        points=points,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--thumbor", default=".venv-thumbor/bin/thumbor")
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument(
        "--app-root",
        action="append",
        type=parse_app_tree,
        metavar="LABEL=PATH",
        help="a source tree to serve imgjobs from (repeatable; default: this checkout)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds per workload")
    parser.add_argument(
        "--probes", action="store_true", help="run bench.pool_sizes' API probes beside imgjobs"
    )
    parser.add_argument("--thumbor-resize", choices=["stretch", "crop"], default="stretch")
    parser.add_argument("--ceiling-duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--quick", action="store_true", help="N=20, 2 s ceilings")
    parser.add_argument("--quiet-below", type=float, default=25.0, metavar="PCT")
    parser.add_argument("--quiet-wait-s", type=float, default=10.0, help="0: never wait")
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    args = parser.parse_args(argv)
    args.app_root = args.app_root or [AppTree("imgjobs", str(ROOT))]
    if len({tree.label for tree in args.app_root}) < len(args.app_root):
        parser.error("every --app-root needs a label of its own")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        args.jobs, args.ceiling_duration_s = min(args.jobs, 20), min(args.ceiling_duration_s, 2)
    if not os.access(args.thumbor, os.X_OK):
        sys.exit(
            f"bench.peers: no thumbor at {args.thumbor}; `make bench-peers` installs it into"
            " .venv-thumbor (thumbor needs stock Pillow, so never into the project's venv)"
        )
    args.thumbor_version = subprocess.run(
        [args.thumbor, "--version"], capture_output=True, text=True, check=False, timeout=60
    ).stdout.strip()
    workloads = len(args.workload or DEFAULT_WORKLOADS)
    per_workload = args.repeats * (1 + len(args.app_root)) + (0 if args.no_ceiling else 1)
    progress = Progress(per_workload * workloads)
    try:
        report = trio.run(run, args, progress)
    finally:
        progress.close()
    trees = ", ".join(f"{t.tree} = {t.source}" for t in report.points[0].trees)
    print(f"{report.thumbor_version} against imgjobs ({trees}; pool size = cores)")
    print(f"on {summary_line(report.machine)}")
    print(
        f"{report.jobs} concurrent requests per batch, {report.repeats} round(s) per workload;"
        " imgjobs' jobs include the download of the result"
        f" ({'with' if report.imgjobs_probes else 'no'} API probes beside them);"
        " medians [min-max] over rounds.\n"
    )
    print(table(report))
    path = results_dir() / f"peers-{stamp()}.json"
    write_json(path, report)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

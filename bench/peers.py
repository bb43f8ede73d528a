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

imgjobs is measured right after on a fresh server with pool size = cores, the same N, and
a raw upload (it has to receive the image; thumbor reads a local file). Also shown: the
in-process ceiling at the core count and the PSNR of both outputs (as served) against
full decode + LANCZOS. Each measurement first waits (at most ``--quiet-wait-s``) for the
shared machine to be below ``--quiet-below`` % busy. Writes ``bench/results/peers-<time>.json``.

Run from the project root::

    make bench-peers                      # builds .venv-thumbor (thumbor 7.8.0), runs this
    python -m bench.peers --thumbor .venv-thumbor/bin/thumbor [--jobs 50] [--workload W]...
"""

from __future__ import annotations

import argparse
import math
import os
import socket
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
from bench.stats import Progress, Summary, ratio, summarize
from bench.workloads import (
    DEFAULT_WORKLOADS,
    WORKLOADS,
    Workload,
    corpus_dir,
    reference_psnr,
    source_bytes,
    source_path,
)

__all__ = ["PeerPoint", "main", "thumbor_path"]

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


class PeerPoint(msgspec.Struct, frozen=True, kw_only=True):
    workload: str
    job: str
    imgjobs: PoolPoint
    imgjobs_psnr_db: float
    thumbor: ThumborRun
    ceiling_images_per_s: float
    imgjobs_over_thumbor: float


class PeerReport(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    machine: Machine
    thumbor_version: str
    jobs: int
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
        "| workload | job | thumbor URL | imgjobs jobs/s | thumbor jobs/s | imgjobs / thumbor"
        " | ceiling img/s | latency p50 ms imgjobs / thumbor | PSNR dB imgjobs / thumbor |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for p in report.points:
        lines.append(
            f"| {p.workload} | {p.job} | `{p.thumbor.url}` | {p.imgjobs.jobs_per_s:.1f}"
            f" | {p.thumbor.jobs_per_s:.1f} | {p.imgjobs_over_thumbor:.2f}x"
            f" | {p.ceiling_images_per_s:.1f} | {p.imgjobs.e2e_ms.p50:.0f} /"
            f" {p.thumbor.latency_ms.p50:.0f} | {p.imgjobs_psnr_db:.1f} / {p.thumbor.psnr_db:.1f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, progress: Progress) -> PeerReport:
    cores = len(os.sched_getaffinity(0))
    workloads = [WORKLOADS[name] for name in args.workload or DEFAULT_WORKLOADS]
    ceiling: list[CeilingPoint] = []
    points: list[PeerPoint] = []
    quiet = Quiet(below_pct=args.quiet_below, max_wait_s=args.quiet_wait_s)

    async def settle() -> None:
        if quiet.max_wait_s > 0:
            await trio.to_thread.run_sync(wait_for_quiet, quiet)

    with tempfile.TemporaryDirectory(prefix="imgjobs-peers-") as scratch:
        root = _scratch_root(Path(scratch), workloads, args.corpus)
        for workload in workloads:
            data = source_bytes(workload, args.corpus)
            progress.step(f"{workload.name}: ceiling at {cores} processes")
            if not args.no_ceiling:
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
            progress.step(f"{workload.name}: thumbor x{cores}")
            await settle()
            thumbor = await measure_thumbor(
                args.thumbor, root, workload, data, args.jobs, args.thumbor_resize
            )
            progress.finish_step(f"{thumbor.jobs_per_s:.1f} jobs/s")
            progress.step(f"{workload.name}: imgjobs pool {cores}", args.jobs)
            await settle()
            imgjobs, outputs = await measure_service(
                workload,
                data,
                pool_size=cores,
                jobs=args.jobs,
                upload="raw",
                ceiling=ceiling,
                cores=cores,
                on_done=lambda _job: progress.advance(),
                keep_outputs=True,
            )
            progress.finish_step(f"{imgjobs.jobs_per_s:.1f} jobs/s")
            served = outputs[0] if outputs else b""
            points.append(
                PeerPoint(
                    workload=workload.name,
                    job=workload.job,
                    imgjobs=imgjobs,
                    imgjobs_psnr_db=round(reference_psnr(workload, data, served), 2)
                    if served
                    else math.nan,
                    thumbor=thumbor,
                    ceiling_images_per_s=ceiling_at(ceiling, workload.name, cores),
                    imgjobs_over_thumbor=round(ratio(imgjobs.jobs_per_s, thumbor.jobs_per_s), 3),
                )
            )
    return PeerReport(
        source=source_revision(),
        machine=describe_machine(),
        thumbor_version=args.thumbor_version,
        jobs=args.jobs,
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
    parser.add_argument("--thumbor-resize", choices=["stretch", "crop"], default="stretch")
    parser.add_argument("--ceiling-duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--quick", action="store_true", help="N=20, 2 s ceilings")
    parser.add_argument("--quiet-below", type=float, default=25.0, metavar="PCT")
    parser.add_argument("--quiet-wait-s", type=float, default=10.0, help="0: never wait")
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    args = parser.parse_args(argv)
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
    progress = Progress(3 * workloads)
    try:
        report = trio.run(run, args, progress)
    finally:
        progress.close()
    print(f"{report.thumbor_version} against imgjobs {report.source} (pool size = cores)")
    print(f"on {summary_line(report.machine)}")
    print(f"{report.jobs} concurrent requests per point.\n")
    print(table(report))
    path = results_dir() / f"peers-{stamp()}.json"
    write_json(path, report)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

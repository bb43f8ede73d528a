"""Service jobs/s and latency by worker pool size, against the in-process ceiling.

For each workload: first the ceiling (``bench.ceiling``: ``imaging.process`` in 1..cores
plain processes), then for each pool size a fresh ``python -m app`` (fresh temporary
folders, PORT=0 on 127.0.0.1) that gets ``pool size`` warm-up jobs (spawning its worker
processes; not counted) and then N jobs at once over real HTTP (``bench.http``'s minimal
client under trio, N concurrent tasks, each ``POST /jobs`` then ``GET /jobs/{id}?wait=30``
until done). Meanwhile ``GET /jobs/{id}`` and ``GET /health`` are timed every ~50 ms, and
/proc is sampled for the CPU and peak RSS of the server and its workers (and the CPU other
processes took: this machine is shared, so that is the noise; each measurement first
waits, for at most ``--quiet-wait-s``, until the machine is below ``--quiet-below`` %
busy). Per point it reports jobs/s (N / first submit to last completion), end-to-end and
probe latencies, the server's own queue_wait_ms / processing_ms log figures, and
**efficiency = service jobs/s / ceiling images/s at min(pool size, cores) processes**.
Two submit latencies: "burst submit" is the ``POST /jobs`` of the N jobs, all sent at the
same instant, so it includes the burst's own queueing; "1 MB submit under load" is a raw
upload of ``mate__Elephants.jpg`` (1 MB, resize 200x200, job deleted at once) every 500 ms
from the moment all N POSTs are answered (the queue holds the backlog, every worker is
busy) until the batch ends: the issue's "under full load, submit p50 <= 10 ms for a 1 MB
image".
Then the PSNR of one result (and of a PNG-output twin) against full decode + LANCZOS.

Run from the project root (on 2 cores about 8 minutes with the defaults, ``--quick`` about
2, plus at most ``--quiet-wait-s`` before each of the measurements)::

    python -m bench.pool_sizes                          # 5 workloads, pools 1,2,4,8,16, N=50
    python -m bench.pool_sizes --quick                  # pools 1,2,4, N=20, 2 s ceilings
    python -m bench.pool_sizes --workload path-1600 --upload json --jobs 100
    python -m bench.pool_sizes --profile                # + py-spy of the server at pool=cores
    python -m bench.pool_sizes --pool-sizes 1,2 --repeats 3   # medians of 3 runs per point
    python -m bench.pool_sizes --pool-sizes 1,2 --repeats 3 \
        --app-root before=/tmp/imgjobs-old --app-root after=.  # two trees, interleaved
    make bench BENCH_ARGS="--quick"

With ``--repeats R`` each point is measured R times, each on a fresh server, in R rounds:
each round measures every pool size once, forward on even rounds and backward on odd ones
(1 2 4 4 2 1 ...), so the ratios between pool sizes compare batches of the same minutes of
the shared machine. The run with the median jobs/s stands for the point (all its figures
come from that run), the tables show the range of the R runs next to it, and "2 / 1 in
each round" the range of the round-by-round ratios.

``--app-root label=path`` (repeatable) serves imgjobs from other source trees too (e.g. a
``git worktree`` of an older commit for "before", and ``after=.``; see ``bench.server``):
each round then measures every pool size for every tree, interleaved the same way, and
every row is labelled with its tree. The ceiling (this checkout's ``imaging``) is measured
once per workload for all of them.

Prints Markdown tables (paste-ready for the README) on stdout, progress on stderr, and
writes ``bench/results/pool_sizes-<time>.json`` (every figure and the machine), ``.md`` and
a ``.png`` chart of jobs/s and p95 latency against pool size.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
import trio

from bench.ceiling import CeilingPoint, parse_counts, run_ceiling
from bench.chart import draw_chart
from bench.load import JobResult, Upload
from bench.machine import describe_machine, summary_line
from bench.procs import Quiet, add_quiet_options, wait_for_quiet
from bench.profile import py_spy, summarize
from bench.report import (
    PoolPoint,
    Quality,
    RunReport,
    markdown,
    results_dir,
    source_revision,
    stamp,
    write_json,
)
from bench.runs import measure_quality, measure_service
from bench.server import AppTree, ServerError, parse_app_tree
from bench.stats import Progress
from bench.workloads import DEFAULT_WORKLOADS, WORKLOADS, Workload, corpus_dir, source_bytes

__all__ = ["main", "run"]


class Options(argparse.Namespace):
    workload: list[str] | None
    pool_sizes: list[int]
    jobs: int
    upload: Upload
    ceiling_duration_s: float
    no_ceiling: bool
    no_quality: bool
    quick: bool
    profile: bool
    corpus: Path
    output: Path | None
    quiet_below: float
    quiet_wait_s: float
    repeats: int
    app_root: list[AppTree] | None


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pool_sizes",
        description=(__doc__ or "").split("\n")[0],
        epilog="workloads: "
        + "; ".join(f"{w.name} = {w.source or '1x1 PNG'} {w.job}" for w in WORKLOADS.values()),
    )
    parser.add_argument(
        "--workload",
        action="append",
        choices=sorted(WORKLOADS),
        help=f"repeatable (default: {', '.join(DEFAULT_WORKLOADS)})",
    )
    parser.add_argument("--pool-sizes", type=parse_counts, default=[1, 2, 4, 8, 16])
    parser.add_argument("--jobs", type=int, default=50, help="N: concurrent jobs per point")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="batches per point, each on a fresh server; the point shown is the median run",
    )
    parser.add_argument(
        "--app-root",
        action="append",
        type=parse_app_tree,
        metavar="LABEL=PATH",
        help="serve imgjobs from this source tree (repeatable; default: this checkout only)",
    )
    parser.add_argument("--upload", choices=["json", "raw", "multipart"], default="raw")
    parser.add_argument("--ceiling-duration-s", type=float, default=5.0)
    parser.add_argument("--no-ceiling", action="store_true", help="skip the ceiling")
    parser.add_argument("--no-quality", action="store_true", help="skip the PSNR check")
    parser.add_argument("--quick", action="store_true", help="pools 1,2,4; N=20; 2 s ceilings")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server at pool size = cores"
    )
    add_quiet_options(parser)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument(
        "--output", type=Path, help="file prefix (default bench/results/pool_sizes-<time>)"
    )
    options = parser.parse_args(argv, namespace=Options())
    if options.quick:
        options.pool_sizes = [p for p in options.pool_sizes if p <= 4] or [1, 2, 4]
        options.jobs = min(options.jobs, 20)
        options.ceiling_duration_s = min(options.ceiling_duration_s, 2.0)
    if options.jobs < 1:
        parser.error("--jobs must be at least 1")
    if options.repeats < 1:
        parser.error("--repeats must be at least 1")
    labels = [tree.label for tree in options.app_root or []]
    if len(set(labels)) < len(labels):
        parser.error("every --app-root needs a label of its own")
    if options.profile and py_spy() is None:
        parser.error("--profile needs py-spy (pip install py-spy)")
    return options


async def run_workload(
    workload: Workload,
    options: Options,
    cores: int,
    progress: Progress,
    prefix: Path,
) -> tuple[list[CeilingPoint], list[PoolPoint], Quality | None]:
    """The ceiling, then every pool size, for one workload."""
    data = source_bytes(workload, options.corpus)
    quiet = (
        Quiet(below_pct=options.quiet_below, max_wait_s=options.quiet_wait_s)
        if options.quiet_wait_s > 0
        else None
    )
    ceiling: list[CeilingPoint] = []
    if not options.no_ceiling:
        counts = sorted({min(p, cores) for p in options.pool_sizes})
        progress.step(f"{workload.name} ceiling at {','.join(map(str, counts))} processes")
        ceiling = await trio.to_thread.run_sync(
            lambda: run_ceiling(
                [workload],
                counts,
                corpus=options.corpus,
                duration_s=options.ceiling_duration_s,
                quiet=quiet,
            )
        )
        shown = ", ".join(f"{c.images_per_s:.1f} at {c.processes}" for c in ceiling)
        progress.finish_step(f"images/s: {shown}")
    trees: list[AppTree | None] = [*options.app_root] if options.app_root else [None]
    order = [(pool_size, tree) for pool_size in options.pool_sizes for tree in trees]
    runs: dict[tuple[int, str], list[PoolPoint]] = {}
    quality: Quality | None = None
    for run_number in range(options.repeats):
        for pool_size, tree in order if run_number % 2 == 0 else order[::-1]:
            label = f"{workload.name} pool {pool_size}" + (f" {tree.label}" if tree else "")
            if options.repeats > 1:
                label += f" run {run_number + 1}/{options.repeats}"
            progress.step(label, options.jobs)
            profile = (
                prefix.with_name(
                    f"{prefix.name}-profile-{workload.name}-pool{pool_size}"
                    + (f"-{tree.label}" if tree else "")
                    + ".txt"
                )
                if options.profile
                and run_number == 0
                and pool_size == min(cores, max(options.pool_sizes))
                else None
            )

            def done(job: JobResult) -> None:
                progress.advance()

            if quiet is not None:
                await trio.to_thread.run_sync(wait_for_quiet, quiet)
            try:
                point, outputs = await measure_service(
                    workload,
                    data,
                    pool_size=pool_size,
                    jobs=options.jobs,
                    upload=options.upload,
                    ceiling=ceiling,
                    cores=cores,
                    on_done=done,
                    profile_to=profile,
                    keep_outputs=quality is None and not options.no_quality,
                    app_root=tree.root if tree else "",
                )
            except (ServerError, trio.TooSlowError) as exc:
                progress.message(f"{label}: no result: {exc!r}")
                progress.finish_step()
                continue
            if tree is not None:
                point = msgspec.structs.replace(point, tree=tree.label)
            runs.setdefault((pool_size, tree.label if tree else ""), []).append(point)
            if outputs is not None:
                quality = await trio.to_thread.run_sync(measure_quality, workload, data, *outputs)
            progress.finish_step(
                f"{point.jobs_per_s:.1f} jobs/s, efficiency {point.efficiency:.0%},"
                f" {point.failures} failures"
            )
            if point.failure_samples:
                progress.message(f"  failures: {point.failure_samples}")
            if profile is not None:
                progress.message(summarize(profile, wall_s=point.wall_s))
    keys = [(pool_size, tree.label if tree else "") for pool_size, tree in order]
    return ceiling, [median_run(runs[key]) for key in keys if key in runs], quality


def median_run(runs: Sequence[PoolPoint]) -> PoolPoint:
    """The run with the median jobs/s (the lower one of an even count), which carries the
    jobs/s of every run: on a shared machine one batch can be 10% off either way."""
    ranked = sorted(runs, key=lambda point: point.jobs_per_s)
    middle = ranked[(len(ranked) - 1) // 2]
    if len(runs) == 1:
        return middle
    return msgspec.structs.replace(middle, runs_jobs_per_s=[p.jobs_per_s for p in runs])


async def run(options: Options, prefix: Path) -> RunReport:
    """Measure every workload; the report holds every figure."""
    cores = len(os.sched_getaffinity(0))
    machine = describe_machine()
    source = source_revision()
    trees = {tree.label: source_revision(Path(tree.root)) for tree in options.app_root or []}
    workloads = [WORKLOADS[name] for name in options.workload or DEFAULT_WORKLOADS]
    steps = len(workloads) * (
        len(options.pool_sizes) * max(len(trees), 1) * options.repeats
        + (0 if options.no_ceiling else 1)
    )
    progress = Progress(steps)
    progress.message(f"pool_sizes: {summary_line(machine)}")
    ceiling: list[CeilingPoint] = []
    points: list[PoolPoint] = []
    quality: list[Quality] = []
    try:
        for workload in workloads:
            found = await run_workload(workload, options, cores, progress, prefix)
            ceiling += found[0]
            points += found[1]
            quality += [found[2]] if found[2] is not None else []
    finally:
        progress.close()
    return RunReport(
        started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=[Path(sys.executable).name, "-m", "bench.pool_sizes", *sys.argv[1:]],
        source=source,
        machine=machine,
        jobs=options.jobs,
        upload=options.upload,
        pool_sizes=options.pool_sizes,
        ceiling_duration_s=0.0 if options.no_ceiling else options.ceiling_duration_s,
        ceiling=ceiling,
        points=points,
        quality=quality,
        machine_after=describe_machine(),
        trees=trees,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    prefix = options.output or results_dir() / f"pool_sizes-{stamp()}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    report = trio.run(run, options, prefix)
    text = markdown(report)
    print(text)
    write_json(prefix.with_suffix(".json"), report)
    prefix.with_suffix(".md").write_text(text + "\n")
    written = [prefix.with_suffix(".json"), prefix.with_suffix(".md")]
    if report.points:
        title = f"imgjobs, {report.jobs} concurrent jobs; {summary_line(report.machine)}"
        written.append(draw_chart(report.points, prefix.with_suffix(".png"), title=title))
    print("wrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    bad = [q.workload for q in report.quality if q.psnr_png_db < 35]
    if bad:
        sys.exit(f"PSNR below 35 dB: {', '.join(bad)}")


if __name__ == "__main__":
    main()

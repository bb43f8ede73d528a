"""The ceiling: images/s that ``imaging.process`` itself does here, in 1..N plain processes.

No HTTP, no queue, no database: each of P processes (multiprocessing, spawned fresh) does
one warm-up job, waits at a barrier with the others, then repeats the workload's job (same
input file, same spec as the service would build, output to a scratch file) until
``--duration-s`` has passed or ``--max-images`` are done. The figure is the sum of the
processes' own rates, images/s. ``bench.pool_sizes`` divides the service's jobs/s by it.

Run from the project root::

    python -m bench.ceiling                              # default workloads, 1..cores
    python -m bench.ceiling --workload path-1600 --processes 1,2,4 --duration-s 10
    python -m bench.ceiling --json /tmp/ceiling.json     # machine + every figure

Needs only the standard library, msgspec, Pillow and ``imaging`` (no web stack), so it also
runs in the stock-Pillow venv of ``make bench-pillow``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.queues import SimpleQueue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import msgspec

import imaging
from bench.machine import Machine, describe_machine, summary_line
from bench.procs import Quiet, machine_cpu, own_children_cpu_s, wait_for_quiet
from bench.workloads import (
    DEFAULT_WORKLOADS,
    WORKLOADS,
    Workload,
    corpus_dir,
    job_spec,
    source_bytes,
    source_path,
)

__all__ = ["CeilingPoint", "CeilingReport", "ceiling_at", "main", "measure", "run_ceiling"]

DEFAULT_DURATION_S = 5.0
DEFAULT_MAX_IMAGES = 2_000
# Spawning P interpreters that import PIL takes well under this, even on a busy machine.
START_DEADLINE_S = 60.0


class CeilingPoint(msgspec.Struct, frozen=True, kw_only=True):
    workload: str
    processes: int
    images: int
    images_per_s: float
    ms_per_image: float  # wall time of one image inside one process
    foreign_cpu_pct: float  # other processes' share of the machine meanwhile: noise


class CeilingReport(msgspec.Struct, frozen=True, kw_only=True):
    machine: Machine
    duration_s: float
    points: list[CeilingPoint]


class _Outcome(msgspec.Struct, frozen=True):
    images: int
    elapsed_s: float


def _loop(
    spec: imaging.JobSpec,
    src: str,
    dst: str,
    barrier: Barrier,
    duration_s: float,
    max_images: int,
    results: SimpleQueue[_Outcome],
) -> None:
    """One process of the ceiling: warm up, line up with the others, repeat the job."""
    imaging.process(spec, src, dst)
    barrier.wait(START_DEADLINE_S)
    started = time.perf_counter()
    deadline = started + duration_s
    images = 0
    while images < max_images and time.perf_counter() < deadline:
        imaging.process(spec, src, dst)
        images += 1
    elapsed = time.perf_counter() - started
    results.put(_Outcome(images, elapsed))


def measure(
    workload: Workload,
    processes: int,
    *,
    corpus: Path,
    duration_s: float = DEFAULT_DURATION_S,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> CeilingPoint:
    """Run ``workload`` in ``processes`` processes at once and report their summed rate."""
    spawn = multiprocessing.get_context("spawn")
    cpu_before, children_before = machine_cpu(), own_children_cpu_s()
    barrier = spawn.Barrier(processes)
    results: SimpleQueue[_Outcome] = spawn.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="imgjobs-ceiling-") as scratch:
        src = str(source_path(workload, corpus, Path(scratch)))
        spec = job_spec(workload, source_bytes(workload, corpus))
        suffix = "jpg" if spec.variants["default"].output_format == "jpeg" else "png"
        workers = [
            spawn.Process(
                target=_loop,
                args=(
                    spec,
                    src,
                    os.path.join(scratch, f"out-{n}.{suffix}"),
                    barrier,
                    duration_s,
                    max_images,
                    results,
                ),
                daemon=True,
            )
            for n in range(processes)
        ]
        for worker in workers:
            worker.start()
        outcomes: list[_Outcome] = []
        try:
            for worker in workers:
                # Bounded: warm-up + barrier + the loop's own deadline, plus one slow image.
                worker.join(START_DEADLINE_S + duration_s + 60)
                if worker.exitcode != 0:
                    raise RuntimeError(
                        f"ceiling process for {workload.name} ended {worker.exitcode}"
                    )
            outcomes = [results.get() for _ in workers]
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
                    worker.join(5)
    cpu_after = machine_cpu()
    ours = own_children_cpu_s() - children_before
    window = cpu_after.total_s - cpu_before.total_s
    foreign = cpu_after.busy_s - cpu_before.busy_s - ours
    rates = [o.images / o.elapsed_s for o in outcomes if o.elapsed_s > 0]
    images = sum(o.images for o in outcomes)
    per_process = sum(rates) / processes if rates else 0.0
    return CeilingPoint(
        workload=workload.name,
        processes=processes,
        images=images,
        images_per_s=round(sum(rates), 2),
        ms_per_image=round(1000 / per_process, 2) if per_process else float("nan"),
        foreign_cpu_pct=round(max(100 * foreign / window, 0.0), 1) if window > 0 else 0.0,
    )


def run_ceiling(
    workloads: Iterable[Workload],
    process_counts: Sequence[int],
    *,
    corpus: Path,
    duration_s: float = DEFAULT_DURATION_S,
    max_images: int = DEFAULT_MAX_IMAGES,
    quiet: Quiet | None = None,
    on_point: Callable[[CeilingPoint], None] | None = None,
) -> list[CeilingPoint]:
    """Every workload at every process count, one after the other (never overlapping),
    each after waiting for a quiet machine if ``quiet`` says so."""
    points = []
    for workload in workloads:
        for processes in process_counts:
            if quiet is not None:
                wait_for_quiet(quiet)
            point = measure(
                workload, processes, corpus=corpus, duration_s=duration_s, max_images=max_images
            )
            points.append(point)
            if on_point is not None:
                on_point(point)
    return points


def ceiling_at(points: Iterable[CeilingPoint], workload: str, processes: int) -> float:
    """images/s for ``workload`` at ``processes`` processes, capped at the highest measured."""
    matching = {p.processes: p.images_per_s for p in points if p.workload == workload}
    if not matching:
        return float("nan")
    usable = [n for n in matching if n <= processes] or [min(matching)]
    return matching[max(usable)]


def format_table(points: Sequence[CeilingPoint]) -> str:
    """A Markdown table: one row per workload and process count."""
    lines = [
        "| workload | job | processes | images/s | ms/image | scaling vs 1 | other load |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for point in points:
        one = ceiling_at(points, point.workload, 1)
        scaling = point.images_per_s / one if one else float("nan")
        lines.append(
            f"| {point.workload} | {WORKLOADS[point.workload].job} | {point.processes} "
            f"| {point.images_per_s:.1f} | {point.ms_per_image:.1f} | {scaling:.2f}x "
            f"| {point.foreign_cpu_pct:.0f}% |"
        )
    return "\n".join(lines)


def parse_counts(text: str) -> list[int]:
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4, not {text!r}")
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(
        prog="python -m bench.ceiling", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--workload",
        action="append",
        choices=sorted(WORKLOADS),
        help=f"repeatable; default: {', '.join(DEFAULT_WORKLOADS)}",
    )
    parser.add_argument(
        "--processes",
        type=parse_counts,
        default=list(range(1, cores + 1)),
        help=f"comma-separated process counts (default: 1..{cores}, the usable cores)",
    )
    parser.add_argument("--duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--json", type=Path, help="also write machine + figures here")
    parser.add_argument(
        "--quiet-below",
        type=float,
        metavar="PCT",
        help="before each measurement wait until the machine's CPU use is below PCT%%",
    )
    parser.add_argument("--quiet-wait-s", type=float, default=60.0, help="at most this long")
    args = parser.parse_args(argv)
    workloads = [WORKLOADS[name] for name in args.workload or DEFAULT_WORKLOADS]
    machine = describe_machine()
    print(f"# ceiling: {summary_line(machine)}", flush=True)
    points = run_ceiling(
        workloads,
        args.processes,
        corpus=args.corpus,
        duration_s=args.duration_s,
        max_images=args.max_images,
        quiet=Quiet(below_pct=args.quiet_below, max_wait_s=args.quiet_wait_s)
        if args.quiet_below is not None
        else None,
        on_point=lambda p: print(
            f"  {p.workload} x{p.processes}: {p.images_per_s:.1f} images/s"
            f" (other processes used {p.foreign_cpu_pct:.0f}% of the machine)",
            flush=True,
        ),
    )
    print(format_table(points))
    if args.json is not None:
        report = CeilingReport(machine=machine, duration_s=args.duration_s, points=points)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")


if __name__ == "__main__":
    main()

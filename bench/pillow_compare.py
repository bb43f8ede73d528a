"""What pillow-simd buys: the ceiling (``bench.ceiling``) under pillow-simd and stock Pillow.

The same ``imaging.process`` on the same inputs, run by two interpreters one after the
other, workload by workload (so both see the same moment of a shared machine; each
measurement first waits a little for it to be quiet, see ``--quiet-below``): this one
(the project's venv, pillow-simd) and a venv with stock Pillow from PyPI, which gets the
repository on ``PYTHONPATH`` (``imaging`` needs only Pillow and msgspec). Prints a Markdown
table of images/s side by side and writes ``bench/results/pillow-<time>.json``.

Run from the project root::

    make bench-pillow                         # builds .venv-stock-pillow, then runs this
    python -m bench.pillow_compare --stock-python .venv-stock-pillow/bin/python
    python -m bench.pillow_compare --stock-python PY --workload path-1600 --processes 1 \
        --duration-s 10
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench.ceiling import DEFAULT_DURATION_S, CeilingPoint, CeilingReport, parse_counts
from bench.machine import Machine, summary_line
from bench.report import results_dir, source_revision, stamp, write_json
from bench.workloads import DEFAULT_WORKLOADS, WORKLOADS

__all__ = ["Comparison", "main", "run_ceiling_with"]

ROOT = Path(__file__).resolve().parents[1]
# One interpreter's ceiling for one workload: spawn, warm-up, 1..cores x duration.
RUN_DEADLINE_S = 900


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    simd: Machine
    stock: Machine
    duration_s: float
    simd_points: list[CeilingPoint]
    stock_points: list[CeilingPoint]


def run_ceiling_with(python: str, arguments: Sequence[str]) -> CeilingReport:
    """``python -m bench.ceiling ARGUMENTS`` with this repository importable; its report."""
    with tempfile.TemporaryDirectory(prefix="imgjobs-pillow-") as scratch:
        out = Path(scratch) / "ceiling.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        subprocess.run(
            [python, "-m", "bench.ceiling", *arguments, "--json", str(out)],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=sys.stderr,
            timeout=RUN_DEADLINE_S,
        )
        return msgspec.json.decode(out.read_bytes(), type=CeilingReport)


def _cell(point: CeilingPoint | None) -> str:
    return "-" if point is None else f"{point.images_per_s:.1f}"


def table(comparison: Comparison) -> str:
    stock = {(p.workload, p.processes): p for p in comparison.stock_points}
    lines = [
        "| workload | job | processes | pillow-simd images/s | stock Pillow images/s"
        " | simd / stock | other load simd / stock |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for point in comparison.simd_points:
        other = stock.get((point.workload, point.processes))
        gain = point.images_per_s / other.images_per_s if other and other.images_per_s else math.nan
        noise = f"{point.foreign_cpu_pct:.0f}% / " + (
            f"{other.foreign_cpu_pct:.0f}%" if other else "-"
        )
        lines.append(
            f"| {point.workload} | {WORKLOADS[point.workload].job} | {point.processes} "
            f"| {_cell(point)} | {_cell(other)} | {gain:.2f}x | {noise} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(
        prog="python -m bench.pillow_compare", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--stock-python", required=True, help="interpreter with stock Pillow")
    parser.add_argument("--simd-python", default=sys.executable, help="(default: this one)")
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--processes", default=",".join(map(str, range(1, cores + 1))))
    parser.add_argument("--duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--quick", action="store_true", help="2 s per measurement")
    parser.add_argument("--quiet-below", type=float, default=25.0, metavar="PCT")
    parser.add_argument("--quiet-wait-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    parse_counts(args.processes)
    duration = min(args.duration_s, 2.0) if args.quick else args.duration_s
    simd_points: list[CeilingPoint] = []
    stock_points: list[CeilingPoint] = []
    machines: dict[str, Machine] = {}
    for name in args.workload or DEFAULT_WORKLOADS:
        common = ["--workload", name, "--processes", args.processes, "--duration-s", f"{duration}"]
        if args.quiet_wait_s > 0:
            common += [
                "--quiet-below",
                f"{args.quiet_below}",
                "--quiet-wait-s",
                f"{args.quiet_wait_s}",
            ]
        for label, python, points in (
            ("simd", args.simd_python, simd_points),
            ("stock", args.stock_python, stock_points),
        ):
            report = run_ceiling_with(python, common)
            machines[label] = report.machine
            points.extend(report.points)
    simd, stock = machines["simd"], machines["stock"]
    if not simd.pillow_simd or stock.pillow_simd:
        sys.exit(
            f"expected pillow-simd vs stock Pillow, got {simd.pillow_version} ({args.simd_python})"
            f" vs {stock.pillow_version} ({args.stock_python})"
        )
    comparison = Comparison(
        source=source_revision(),
        simd=simd,
        stock=stock,
        duration_s=duration,
        simd_points=simd_points,
        stock_points=stock_points,
    )
    print(f"imaging.process of imgjobs {comparison.source}")
    print(f"pillow-simd: {summary_line(simd)}")
    print(f"stock:       {summary_line(stock)}")
    print()
    print(table(comparison))
    path = results_dir() / f"pillow-{stamp()}.json"
    write_json(path, comparison)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

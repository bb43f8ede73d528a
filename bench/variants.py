"""What several outputs from one upload cost: four variants of a 20 MP JPEG in one job (one
decode) against the largest alone and against the same four as four jobs (four decodes).

The issue's target: four variants (1600 wide, 800 wide, 400 wide, 200x200 cover) cost at
most 1.5x the largest one alone; as four separate jobs they cost about 4x. The source is the
20 MP baseline JPEG of ``bench.chain`` (made from the corpus in a temporary folder).

Everything runs in this one process through ``imaging.process_variants`` and
``imaging.process`` (the worker's code path, from the file to encoded JPEGs); no HTTP. Each
repeat runs the three cases once, forward on even repeats and backward on odd ones; a case's
ratio is the median over repeats of its time divided by the largest-alone time of the same
repeat. Run from the project root::

    python -m bench.variants                # 11 repeats, about a minute
    python -m bench.variants --repeats 5

Prints a Markdown table and writes ``bench/results/variants-<time>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

import imaging
from bench.chain import make_source
from bench.machine import Machine, describe_machine, summary_line
from bench.report import results_dir, source_revision, stamp, write_json
from bench.workloads import corpus_dir

__all__ = ["VARIANTS", "main"]

MAX_PIXELS = 50_000_000
VARIANTS = {
    "w1600": [{"op": "resize", "width": 1600}],
    "w800": [{"op": "resize", "width": 800}],
    "w400": [{"op": "resize", "width": 400}],
    "square200": [{"op": "resize", "width": 200, "height": 200, "fit": "cover"}],
}
LARGEST = "w1600"
TARGET_RATIO = 1.5


class CaseResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    ms: list[float]
    median_ms: float
    min_ms: float
    max_ms: float
    ratio: float  # median over repeats of ms / largest-alone ms in the same repeat
    ratio_min: float
    ratio_max: float


class VariantsReport(msgspec.Struct, frozen=True, kw_only=True):
    machine: Machine
    revision: str
    repeats: int
    target_ratio: float
    cases: list[CaseResult]


def _rendition(steps: list[dict[str, object]]) -> imaging.Rendition:
    return imaging.Rendition(steps=msgspec.convert(steps, list[imaging.Step]), output_format="jpeg")


def make_cases(source: str, scratch: Path) -> dict[str, Callable[[], object]]:
    """The three cases, each a call that does its whole work once."""
    every = {name: _rendition(steps) for name, steps in VARIANTS.items()}
    one_job = imaging.JobSpec(variants=every, max_pixels=MAX_PIXELS)
    alone = {
        name: imaging.JobSpec(variants={name: rendition}, max_pixels=MAX_PIXELS)
        for name, rendition in every.items()
    }
    dsts = {name: str(scratch / f"{name}.jpg") for name in VARIANTS}

    def largest_alone() -> object:
        return imaging.process(alone[LARGEST], source, dsts[LARGEST])

    def four_variants_one_job() -> object:
        return imaging.process_variants(one_job, source, dsts)

    def four_jobs() -> object:
        return [imaging.process(alone[name], source, dsts[name]) for name in VARIANTS]

    return {
        "largest alone (1600 wide)": largest_alone,
        "4 variants, one job": four_variants_one_job,
        "4 separate jobs": four_jobs,
    }


def run(cases: dict[str, Callable[[], object]], repeats: int) -> list[CaseResult]:
    names = list(cases)
    for case in cases.values():  # warm-up
        case()
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            started = time.perf_counter()
            cases[name]()
            times[name].append(round(1000 * (time.perf_counter() - started), 2))
    base = times[names[0]]
    rows = []
    for name in names:
        ratios = [t / b for t, b in zip(times[name], base, strict=True)]
        rows.append(
            CaseResult(
                name=name,
                ms=times[name],
                median_ms=round(statistics.median(times[name]), 1),
                min_ms=min(times[name]),
                max_ms=max(times[name]),
                ratio=round(statistics.median(ratios), 2),
                ratio_min=round(min(ratios), 2),
                ratio_max=round(max(ratios), 2),
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.variants")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    args = parser.parse_args(argv)
    machine = describe_machine()
    print(f"# variants: {summary_line(machine)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="imgjobs-variants-") as folder:
        scratch = Path(folder)
        source = make_source(args.corpus, scratch)
        rows = run(make_cases(str(source), scratch), args.repeats)
    print("| case | median ms | min-max ms | vs largest alone |")
    print("|---|--:|--:|--:|")
    for row in rows:
        print(
            f"| {row.name} | {row.median_ms:.0f} | {row.min_ms:.0f}-{row.max_ms:.0f}"
            f" | {row.ratio:.2f}x ({row.ratio_min:.2f}-{row.ratio_max:.2f}) |"
        )
    print(f"\ntarget: 4 variants in one job <= {TARGET_RATIO}x the largest alone")
    output = results_dir() / f"variants-{stamp()}.json"
    report = VariantsReport(
        machine=machine,
        revision=source_revision(),
        repeats=args.repeats,
        target_ratio=TARGET_RATIO,
        cases=rows,
    )
    write_json(output, report)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

"""What a chain of steps costs next to the plain thumbnail, on a 20 MP camera JPEG.

The issue's target: a chain of crop + resize ``cover`` + sharpen on a 20 MP JPEG costs at
most 1.2x the plain thumbnail of the same output size. Both make an 800x533 JPEG (q85):

* ``thumbnail``: the seed's job, ``JobSpec.seed("thumbnail", 800, 800, "jpeg")`` (fit inside
  800x800, so 800x533 from a 3:2 image);
* ``chain``: ``crop`` 5% off every edge (fractions 0.05, 0.05, 0.9, 0.9), ``resize`` 800x533
  ``cover``, ``sharpen`` (sigma 1, amount 1).

Other rows users ask about, each against the same thumbnail: a square ``cover`` at the centre,
by ``entropy`` and by ``attention`` (the cost of a content-aware crop), ``contain`` on white,
``rotate`` 30 degrees and ``blur`` sigma 5 after the thumbnail resize.

The source: the corpus's ``mate__Elephants_5640x3172.jpg`` (17.9 MP, progressive) cropped to
3:2 at its centre, resized to 5472x3648 (20.0 MP, a 20 MP camera's size) and saved as a
baseline JPEG at quality 90 in a temporary folder (``--source`` takes any JPEG instead).

Everything runs in this one process through ``imaging.process`` (the worker's code path:
decode from the file, steps, encode to a scratch file); no HTTP, queue or database. Each
case is run once to warm up, then each repeat runs every case once, forward on even repeats
and backward on odd ones (A B C ... C B A), so the cases see the same moments of the machine
and slow drifts cancel. The ratio of a case is the median, over repeats, of its time divided
by the thumbnail's time in the same repeat. Times are wall clock; CPU time of this process
is reported beside them, and other processes' share of the machine during the run says how
noisy the figures are.

Run from the project root::

    python -m bench.chain                   # 15 repeats of every case, ~1-2 minutes
    python -m bench.chain --quick           # 5 repeats, thumbnail and chain only
    python -m bench.chain --repeats 31 --output /tmp/chain.json

Prints a Markdown table; writes the machine, the source and every timing to
``bench/results/chain-<time>.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from PIL import Image

import imaging
from bench.machine import Machine, describe_machine, summary_line
from bench.procs import Quiet, add_quiet_options, machine_cpu, wait_for_quiet
from bench.report import results_dir, source_revision, stamp, write_json
from bench.workloads import corpus_dir
from imaging.document import seed_steps

__all__ = ["Case", "CaseResult", "ChainReport", "main", "make_cases", "make_source", "run"]

CORPUS_SOURCE = "mate__Elephants_5640x3172.jpg"
SOURCE_SIZE = (5472, 3648)  # 20.0 MP, 3:2
SOURCE_QUALITY = 90
TARGET_RATIO = 1.2
DEFAULT_REPEATS = 15
QUICK_REPEATS = 5
MAX_PIXELS = 50_000_000


class Case(msgspec.Struct, frozen=True, kw_only=True):
    """One job on the source: a name for the table, what it does, and its steps."""

    name: str
    description: str
    steps: list[dict[str, Any]]

    def spec(self) -> imaging.JobSpec:
        steps = msgspec.convert(self.steps, list[imaging.Step])
        return imaging.JobSpec.single(steps, "jpeg", max_pixels=MAX_PIXELS)


BASELINE = "thumbnail"
CHAIN = "chain"
# The seed's thumbnail, exactly the steps JobSpec.seed("thumbnail", 800, 800, "jpeg") runs.
_THUMBNAIL: dict[str, Any] = msgspec.to_builtins(seed_steps("thumbnail", 800, 800)[0])


def make_cases(thumbnail: tuple[int, int]) -> list[Case]:
    """The cases for a source whose thumbnail is ``thumbnail`` (800x533 for 3:2): the chain
    resizes to that same size, so both make the same output."""
    width, height = thumbnail
    return [
        Case(name=BASELINE, description="thumbnail 800x800 (fit inside)", steps=[_THUMBNAIL]),
        Case(
            name=CHAIN,
            description=f"crop 0.05,0.05,0.9,0.9 + resize {width}x{height} cover + sharpen",
            steps=[
                {"op": "crop", "left": 0.05, "top": 0.05, "width": 0.9, "height": 0.9},
                {"op": "resize", "width": width, "height": height, "fit": "cover"},
                {"op": "sharpen"},
            ],
        ),
        Case(
            name="cover-centre",
            description="resize 800x800 cover, centre",
            steps=[{"op": "resize", "width": 800, "height": 800}],
        ),
        Case(
            name="cover-entropy",
            description="resize 800x800 cover, position entropy",
            steps=[{"op": "resize", "width": 800, "height": 800, "position": "entropy"}],
        ),
        Case(
            name="cover-attention",
            description="resize 800x800 cover, position attention",
            steps=[{"op": "resize", "width": 800, "height": 800, "position": "attention"}],
        ),
        Case(
            name="contain",
            description="resize 800x800 contain on #ffffff",
            steps=[
                {
                    "op": "resize",
                    "width": 800,
                    "height": 800,
                    "fit": "contain",
                    "background": "#ffffff",
                }
            ],
        ),
        Case(
            name="rotate-30",
            description="thumbnail 800x800 + rotate 30 on #ffffff",
            steps=[_THUMBNAIL, {"op": "rotate", "angle": 30, "background": "#ffffff"}],
        ),
        Case(
            name="blur-5",
            description="thumbnail 800x800 + blur sigma 5",
            steps=[_THUMBNAIL, {"op": "blur", "sigma": 5}],
        ),
    ]


QUICK_CASES = (BASELINE, CHAIN)


class Source(msgspec.Struct, frozen=True, kw_only=True):
    origin: str
    width: int
    height: int
    bytes: int
    progressive: bool


class CaseResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    output_width: int
    output_height: int
    output_bytes: int
    ms: list[float]  # wall time of each repeat, in run order
    cpu_ms: list[float]  # this process's CPU time of each repeat
    median_ms: float
    min_ms: float
    max_ms: float
    median_cpu_ms: float
    ratio: float  # median over repeats of ms / the baseline's ms in the same repeat
    ratio_min: float
    ratio_max: float
    cpu_ratio: float  # the same, of CPU times: less sensitive to other processes


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    machine: Machine
    revision: str
    source: Source
    repeats: int
    foreign_cpu_pct: float  # other processes' share of the machine during the timed repeats
    target_ratio: float
    chain_ratio: float
    chain_cpu_ratio: float
    target_met: bool
    cases: list[CaseResult]


def make_source(corpus: Path, folder: Path) -> Path:
    """The 20 MP baseline JPEG: the corpus photo cut to 3:2 at its centre, resized to
    ``SOURCE_SIZE``, saved at ``SOURCE_QUALITY`` (not progressive)."""
    path = folder / "camera-20mp.jpg"
    with Image.open(corpus / CORPUS_SOURCE) as photo:
        photo.load()
        width, height = photo.size
        kept_width = min(width, round(height * SOURCE_SIZE[0] / SOURCE_SIZE[1]))
        left = (width - kept_width) // 2
        box = (left, 0, left + kept_width, height)
        image = photo.convert("RGB").resize(SOURCE_SIZE, Image.Resampling.LANCZOS, box=box)
    image.save(path, format="JPEG", quality=SOURCE_QUALITY, progressive=False)
    return path


def thumbnail_size(path: Path) -> tuple[int, int]:
    """What the seed's 800x800 thumbnail makes of the image at ``path`` (from its header)."""
    with path.open("rb") as file:
        info = imaging.probe(file, max_pixels=MAX_PIXELS)
    plan = imaging.plan(
        seed_steps("thumbnail", 800, 800), info.displayed, max_pixels=MAX_PIXELS, watermark=False
    )
    return plan.width, plan.height


def _describe(path: Path, origin: str) -> Source:
    with Image.open(path) as image:
        return Source(
            origin=origin,
            width=image.width,
            height=image.height,
            bytes=path.stat().st_size,
            progressive=bool(image.info.get("progressive")),
        )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time(spec: imaging.JobSpec, src: str, dst: str) -> tuple[float, float, imaging.Result]:
    cpu = _cpu_s()
    started = time.perf_counter()
    result = imaging.process(spec, src, dst)
    wall = time.perf_counter() - started
    return 1000 * wall, 1000 * (_cpu_s() - cpu), result


def run(
    cases: Sequence[Case], source: Path, scratch: Path, repeats: int
) -> tuple[list[CaseResult], float]:
    """Time ``cases`` (the first is the baseline) on ``source``, interleaved; returns the
    results and other processes' share of the machine (%) meanwhile."""
    specs = [case.spec() for case in cases]
    outputs = [str(scratch / f"{case.name}.jpg") for case in cases]
    # The warm-up run, whose result says what each case makes.
    results = [imaging.process(s, str(source), d) for s, d in zip(specs, outputs, strict=True)]
    wall: list[list[float]] = [[] for _ in cases]
    cpu: list[list[float]] = [[] for _ in cases]
    machine_before, own_before = machine_cpu(), _cpu_s()
    for repeat in range(repeats):
        order = range(len(cases)) if repeat % 2 == 0 else reversed(range(len(cases)))
        for index in order:
            ms, cpu_ms, _ = _time(specs[index], str(source), outputs[index])
            wall[index].append(round(ms, 2))
            cpu[index].append(round(cpu_ms, 2))
    machine_after, own = machine_cpu(), _cpu_s() - own_before
    window = machine_after.total_s - machine_before.total_s
    foreign = machine_after.busy_s - machine_before.busy_s - own
    foreign_pct = round(max(100 * foreign / window, 0.0), 1) if window > 0 else 0.0
    rows = []
    for case, result, times, cpu_times in zip(cases, results, wall, cpu, strict=True):
        ratios = [t / base for t, base in zip(times, wall[0], strict=True)]
        cpu_ratios = [t / base for t, base in zip(cpu_times, cpu[0], strict=True)]
        rows.append(
            CaseResult(
                name=case.name,
                description=case.description,
                output_width=result.width,
                output_height=result.height,
                output_bytes=result.bytes,
                ms=times,
                cpu_ms=cpu_times,
                median_ms=round(statistics.median(times), 1),
                min_ms=min(times),
                max_ms=max(times),
                median_cpu_ms=round(statistics.median(cpu_times), 1),
                ratio=round(statistics.median(ratios), 3),
                ratio_min=round(min(ratios), 3),
                ratio_max=round(max(ratios), 3),
                cpu_ratio=round(statistics.median(cpu_ratios), 3),
            )
        )
    return rows, foreign_pct


def format_table(rows: Sequence[CaseResult]) -> str:
    """A Markdown table, one row per case."""
    lines = [
        "| case | steps | output | median ms | min-max ms | vs thumbnail | CPU ms | CPU vs |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.description} | {row.output_width}x{row.output_height} "
            f"| {row.median_ms:.0f} | {row.min_ms:.0f}-{row.max_ms:.0f} "
            f"| {row.ratio:.2f}x ({row.ratio_min:.2f}-{row.ratio_max:.2f}) "
            f"| {row.median_cpu_ms:.0f} | {row.cpu_ratio:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chain", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--repeats", type=int, help=f"default {DEFAULT_REPEATS}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_REPEATS} repeats (unless --repeats), thumbnail and chain only",
    )
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument(
        "--source",
        type=Path,
        help="time on this JPEG instead of the 20 MP one made from the corpus",
    )
    parser.add_argument("--output", type=Path, help="default bench/results/chain-<time>.json")
    add_quiet_options(parser)
    args = parser.parse_args(argv)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    machine = describe_machine()
    print(f"# chain: {summary_line(machine)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="imgjobs-chain-") as folder:
        scratch = Path(folder)
        if args.source is not None:
            source_path, origin = args.source, str(args.source)
        else:
            source_path = make_source(args.corpus, scratch)
            origin = (
                f"{CORPUS_SOURCE} cut to 3:2, resized to {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]},"
                f" baseline JPEG q{SOURCE_QUALITY}"
            )
        source = _describe(source_path, origin)
        cases = [
            case
            for case in make_cases(thumbnail_size(source_path))
            if not args.quick or case.name in QUICK_CASES
        ]
        print(
            f"# source: {source.width}x{source.height} ({source.width * source.height / 1e6:.1f}"
            f" MP), {source.bytes / 1e6:.1f} MB,"
            f" {'progressive' if source.progressive else 'baseline'}"
            f"; {origin}; {repeats} repeats, interleaved",
            flush=True,
        )
        if args.quiet_wait_s > 0:
            wait_for_quiet(Quiet(below_pct=args.quiet_below, max_wait_s=args.quiet_wait_s))
        rows, foreign = run(cases, source_path, scratch, repeats)
    baseline, chain = rows[0], next(row for row in rows if row.name == CHAIN)
    if (chain.output_width, chain.output_height) != (baseline.output_width, baseline.output_height):
        raise SystemExit(
            f"the chain made {chain.output_width}x{chain.output_height}, the thumbnail"
            f" {baseline.output_width}x{baseline.output_height}: not the same output size"
        )
    print(format_table(rows))
    met = chain.ratio <= TARGET_RATIO
    print(
        f"\nchain / thumbnail = {chain.ratio:.2f}x wall, {chain.cpu_ratio:.2f}x CPU (medians of"
        f" {repeats} paired ratios; target <= {TARGET_RATIO}x: {'met' if met else 'NOT met'});"
        f" other processes used {foreign:.0f}% of the machine meanwhile"
    )
    report = ChainReport(
        machine=machine,
        revision=source_revision(),
        source=source,
        repeats=repeats,
        foreign_cpu_pct=foreign,
        target_ratio=TARGET_RATIO,
        chain_ratio=chain.ratio,
        chain_cpu_ratio=chain.cpu_ratio,
        target_met=met,
        cases=rows,
    )
    output = args.output or results_dir() / f"chain-{stamp()}.json"
    write_json(output, report)
    shown = output.resolve()
    print(f"wrote {shown.relative_to(Path.cwd()) if shown.is_relative_to(Path.cwd()) else shown}")


if __name__ == "__main__":
    main()

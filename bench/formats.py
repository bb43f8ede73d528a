"""Output formats side by side: bytes, encode time and fidelity of JPEG, WebP, AVIF and PNG.

On the corpus photos (``mate__Storm.jpg``, ``plasma__Path__2560x1600.jpg``,
``mate__Elephants.jpg``, ``skimage__astronaut.png``), each resized once to 1200 px wide
(LANCZOS, never enlarged: the 512 px astronaut stays as it is), every format is encoded at
the service's defaults through :func:`imaging.encode.encode`, the worker's code path: JPEG
q85 (``JPEG_QUALITY``), WebP q80, AVIF q60 (speed 6, one thread), and lossless PNG for
reference. No ICC profile is written, so the bytes are the codecs' alone.

For each: the output's bytes and bits per pixel; the encode time, median of ``--repeats``
(5) runs after one warm-up (wall clock, one process, one thread); PSNR over R, G and B and
SSIM on luma against the resized source. SSIM is computed without numpy on non-overlapping
8x8 blocks (the original paper's window, without sliding it), so it reads a little lower than
the usual Gaussian-window figure; it compares formats with each other, not with other tools.

Run from the project root::

    python -m bench.formats                 # ~20 s
    python -m bench.formats --repeats 9 --output /tmp/formats.json

Prints a Markdown table; writes the machine and every figure to
``bench/results/formats-<time>.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

import msgspec
from PIL import Image, ImageMath

from bench.corpus import corpus_root
from bench.machine import Machine, describe_machine, summary_line
from bench.report import results_dir, stamp, write_json
from bench.workloads import psnr
from imaging import codec, ops
from imaging.codec import OutputFormat
from imaging.document import Output
from imaging.encode import DEFAULT_QUALITY, encode

__all__ = ["Measurement", "Report", "main", "measure", "ssim"]

PHOTOS = (
    "mate__Storm.jpg",
    "plasma__Path__2560x1600.jpg",
    "mate__Elephants.jpg",
    "skimage__astronaut.png",
)
WIDTH = 1200
JPEG_QUALITY = 85
FORMATS: tuple[OutputFormat, ...] = ("jpeg", "webp", "avif", "png")
_BLOCK = 8
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


class Measurement(msgspec.Struct, frozen=True, kw_only=True):
    """One photo in one format."""

    photo: str
    width: int
    height: int
    format: str
    quality: int | None
    bytes: int
    bits_per_pixel: float
    encode_ms: float  # median
    encode_ms_runs: list[float]
    psnr_db: float
    ssim: float


class Report(msgspec.Struct, frozen=True, kw_only=True):
    machine: Machine
    repeats: int
    measurements: list[Measurement]


def ssim(first: Image.Image, second: Image.Image) -> float:
    """Mean SSIM of the two images' luma over non-overlapping 8x8 blocks."""
    size = (first.width // _BLOCK * _BLOCK, first.height // _BLOCK * _BLOCK)
    x = first.convert("L").crop((0, 0, *size)).convert("F")
    y = second.convert("L").crop((0, 0, *size)).convert("F")

    def product(a: Image.Image, b: Image.Image) -> Image.Image:
        result = ImageMath.lambda_eval(lambda v: v["a"] * v["b"], a=a, b=b)
        assert isinstance(result, Image.Image)
        return result

    mx, my = x.reduce(_BLOCK), y.reduce(_BLOCK)
    xx, yy, xy = (product(a, b).reduce(_BLOCK) for a, b in ((x, x), (y, y), (x, y)))
    ssim_map = ImageMath.lambda_eval(
        lambda v: (
            ((v["mx"] * v["my"] * 2 + _C1) * ((v["xy"] - v["mx"] * v["my"]) * 2 + _C2))
            / (
                (v["mx"] * v["mx"] + v["my"] * v["my"] + _C1)
                * (v["xx"] - v["mx"] * v["mx"] + v["yy"] - v["my"] * v["my"] + _C2)
            )
        ),
        mx=mx,
        my=my,
        xx=xx,
        yy=yy,
        xy=xy,
    )
    # ImageStat bins an "F" image into 256 steps: average the raw floats instead.
    values = array("f", ssim_map.tobytes())
    return sum(values) / len(values)


def _photo(name: str) -> Image.Image:
    with Image.open(corpus_root() / "good" / name) as image:
        image.load()
        working = ops.to_working_mode(image)
        if working.width <= WIDTH:
            return working.copy()
        return ops.resize(working, (WIDTH, round(working.height * WIDTH / working.width)))


def measure(
    name: str, image: Image.Image, output_format: OutputFormat, repeats: int, scratch: Path
) -> Measurement:
    """Encode ``image`` as ``output_format`` at its default quality, ``repeats`` + 1 times."""
    dst = scratch / f"out.{output_format}"
    times = []
    for run in range(repeats + 1):
        copy = image.copy()  # encode clears info and may flatten: every run starts the same
        started = time.perf_counter()
        encoded = encode(
            copy,
            str(dst),
            output=Output(),
            output_format=output_format,
            default_jpeg_quality=JPEG_QUALITY,
            icc_profile=None,
        )
        if run:  # the first run warms up (AVIF: loads the plugin)
            times.append((time.perf_counter() - started) * 1000)
    with Image.open(dst) as decoded:
        decoded.load()
        fidelity = psnr(decoded, image), ssim(decoded, image)
    quality = JPEG_QUALITY if output_format == "jpeg" else DEFAULT_QUALITY.get(output_format)
    return Measurement(
        photo=name,
        width=image.width,
        height=image.height,
        format=output_format,
        quality=quality,
        bytes=encoded.bytes,
        bits_per_pixel=round(encoded.bytes * 8 / (image.width * image.height), 3),
        encode_ms=round(statistics.median(times), 1),
        encode_ms_runs=[round(t, 2) for t in times],
        psnr_db=round(fidelity[0], 2),  # infinite (null in the JSON) when lossless
        ssim=round(fidelity[1], 4),
    )


def markdown(report: Report) -> str:
    """The measurements as a Markdown table, then the totals per format."""
    lines = [
        "| photo | size | format | bytes | bits/px | encode ms | PSNR dB | SSIM |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for m in report.measurements:
        label = m.format if m.quality is None else f"{m.format} q{m.quality}"
        psnr_cell = "lossless" if math.isinf(m.psnr_db) else f"{m.psnr_db:.1f}"
        lines.append(
            f"| {m.photo} | {m.width}x{m.height} | {label} | {m.bytes:,} | {m.bits_per_pixel:.2f}"
            f" | {m.encode_ms:.1f} | {psnr_cell} | {m.ssim:.4f} |"
        )
    lines += ["", "| format | total bytes | vs jpeg | total encode ms |", "|---|--:|--:|--:|"]
    jpeg_total = sum(m.bytes for m in report.measurements if m.format == "jpeg")
    for output_format in FORMATS:
        rows = [m for m in report.measurements if m.format == output_format]
        total = sum(m.bytes for m in rows)
        lines.append(
            f"| {output_format} | {total:,} | {total / jpeg_total:.2f} |"
            f" {sum(m.encode_ms for m in rows):.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per encode (5)")
    parser.add_argument("--output", type=Path, help="default bench/results/formats-<time>.json")
    args = parser.parse_args(argv)
    machine = describe_machine()
    codec.register_plugins()
    measurements = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in PHOTOS:
            image = _photo(name)
            for output_format in FORMATS:
                measurements.append(
                    measure(name, image, output_format, args.repeats, Path(scratch))
                )
    report = Report(machine=machine, repeats=args.repeats, measurements=measurements)
    print(summary_line(machine))
    print()
    print(markdown(report))
    output = args.output or results_dir() / f"formats-{stamp()}.json"
    write_json(output, report)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

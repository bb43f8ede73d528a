"""What content-aware crop positions cost: ``imaging.smartcrop`` timed on corpus photos.

For each image and window shape, the best and the median of ``--repeats`` timings of each
strategy (each timing the mean of ``--number`` calls), beside the box-filter reduction alone,
which every call starts with and which is most of the cost for a large image. Prints a
Markdown table; the machine should be quiet (the figures are milliseconds).

Run from the project root::

    python -m bench.smartcrop
    python -m bench.smartcrop --repeats 15 --number 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import timeit
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from PIL import Image

from imaging.smartcrop import attention_offset, entropy_offset

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
GOOD = Path(os.environ.get("IMGJOBS_CORPUS", ROOT.parent / "shared" / "corpus")) / "good"


def _images() -> list[tuple[str, Image.Image]]:
    """(label, loaded image): a 2000x1300 RGB photo, the 5640x3172 one, an RGBA PNG."""
    with Image.open(GOOD / "mate__Storm.jpg") as storm:
        photo = storm.convert("RGB").resize((2000, 1300), Image.Resampling.LANCZOS)
    found = [("Storm.jpg resized, RGB 2000x1300", photo)]
    for name in ("mate__Elephants_5640x3172.jpg", "mate__Gulp.png"):
        with Image.open(GOOD / name) as image:
            image.load()
            found.append((f"{name}, {image.mode} {image.width}x{image.height}", image.copy()))
    return found


def _windows(size: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
    width, height = size
    side = min(size)
    other = (width, width * 9 // 16) if width * 9 // 16 < height else (height * 9 // 16, height)
    return [
        ("1:1", (side, side) if width != height else (side, side // 2)),
        ("16:9" if other[0] == width else "9:16", other),
        ("both axes", (width // 2, height // 2)),
    ]


def _ms(call: Callable[[], object], repeats: int, number: int) -> tuple[float, float]:
    """Best and median of ``repeats`` timings of ``number`` calls, in ms per call."""
    times = [t / number * 1000 for t in timeit.repeat(call, number=number, repeat=repeats)]
    return min(times), statistics.median(times)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=7, help="timings per figure")
    parser.add_argument("--number", type=int, default=10, help="calls per timing")
    args = parser.parse_args(argv)
    print("| image | window | reduce only | entropy | attention |")
    print("|---|---|---|---|---|")
    for label, image in _images():
        scale = 256 / max(image.size)
        small = (round(image.width * scale), round(image.height * scale))
        reduce = partial(image.resize, small, Image.Resampling.BOX)
        best, median = _ms(reduce, args.repeats, args.number)
        reduce_only = f"{best:.2f} ({median:.2f})"
        for shape, window in _windows(image.size):
            cells = []
            for strategy in (entropy_offset, attention_offset):
                best, median = _ms(partial(strategy, image, window), args.repeats, args.number)
                cells.append(f"{best:.2f} ({median:.2f})")
            name = f"{shape} {window[0]}x{window[1]}"
            print(f"| {label} | {name} | {reduce_only} | {cells[0]} | {cells[1]} |")
    print("\nms per call: best (median).")


if __name__ == "__main__":
    main()

"""A PNG chart of a pool-size run, drawn with PIL.ImageDraw (no plotting library needed).

Left: jobs/s against pool size, one line per workload (and source tree), its ceiling at the
core count as a dashed line of the same colour. Right: end-to-end p95 latency against pool
size. Both y axes are logarithmic, since a 1x1 PNG and a 16 MB JPEG differ by two orders of
magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.report import PoolPoint

__all__ = ["draw_chart"]

WIDTH, HEIGHT = 1400, 640
PANEL_TOP, PANEL_BOTTOM = 95, 530
MARGIN_LEFT, GAP = 80, 110
COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
]
GRID = (225, 225, 225)
INK = (40, 40, 40)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):
        return ImageFont.load_default()


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


def _dashed(
    draw: ImageDraw.ImageDraw, y: float, x0: float, x1: float, colour: tuple[int, ...]
) -> None:
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + 8, x1), y)], fill=colour, width=2)
        x += 14


def _panel(
    draw: ImageDraw.ImageDraw,
    left: int,
    width: int,
    title: str,
    pool_sizes: Sequence[int],
    series: dict[str, list[tuple[int, float]]],
    references: dict[str, float],
) -> None:
    font, small = _font(18), _font(14)
    values = [v for points in series.values() for _, v in points if v > 0]
    values += [v for v in references.values() if v > 0]
    if not values:
        return
    low, high = min(values) / 1.5, max(values) * 1.5
    span = math.log10(high) - math.log10(low)

    def y_of(value: float) -> float:
        fraction = (math.log10(max(value, low)) - math.log10(low)) / span
        return PANEL_BOTTOM - fraction * (PANEL_BOTTOM - PANEL_TOP)

    step = width / max(len(pool_sizes) - 1, 1)

    def x_of(pool: int) -> float:
        return left + pool_sizes.index(pool) * step

    draw.text((left, PANEL_TOP - 30), title, fill=INK, font=font)
    for tick in _log_ticks(low, high):
        y = y_of(tick)
        draw.line([(left, y), (left + width, y)], fill=GRID)
        draw.text((left - 8, y), _label(tick), fill=INK, font=small, anchor="rm")
    for pool in pool_sizes:
        x = x_of(pool)
        draw.line([(x, PANEL_TOP), (x, PANEL_BOTTOM)], fill=GRID)
        draw.text((x, PANEL_BOTTOM + 10), str(pool), fill=INK, font=small, anchor="mt")
    draw.text((left + width / 2, PANEL_BOTTOM + 32), "pool size", fill=INK, font=small, anchor="mt")
    draw.rectangle([(left, PANEL_TOP), (left + width, PANEL_BOTTOM)], outline=INK)
    for index, (name, points) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        if name in references:
            _dashed(draw, y_of(references[name]), left, left + width, colour)
        xy = [(x_of(pool), y_of(value)) for pool, value in points if value > 0]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=3)
        for x, y in xy:
            draw.ellipse([(x - 4, y - 4), (x + 4, y + 4)], fill=colour)


def draw_chart(points: Sequence[PoolPoint], path: Path, *, title: str) -> Path:
    """Draw the run's chart to ``path`` (PNG) and return it."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    pool_sizes = sorted({p.pool_size for p in points})
    names = list(dict.fromkeys(p.label for p in points))

    def series(value: Callable[[PoolPoint], float]) -> dict[str, list[tuple[int, float]]]:
        return {
            name: [(p.pool_size, value(p)) for p in points if p.label == name] for name in names
        }

    ceilings = {
        name: max(p.ceiling_images_per_s for p in points if p.label == name) for name in names
    }
    panel = (WIDTH - MARGIN_LEFT - GAP - 40) // 2
    draw.text((MARGIN_LEFT, 12), title, fill=INK, font=_font(16))
    _panel(
        draw,
        MARGIN_LEFT,
        panel,
        "jobs/s (dashed: in-process ceiling at the core count)",
        pool_sizes,
        series(lambda p: p.jobs_per_s),
        {k: v for k, v in ceilings.items() if not math.isnan(v)},
    )
    _panel(
        draw,
        MARGIN_LEFT + panel + GAP,
        panel,
        "end-to-end latency p95, ms",
        pool_sizes,
        series(lambda p: p.e2e_ms.p95),
        {},
    )
    x = MARGIN_LEFT
    for index, name in enumerate(names):
        colour = COLOURS[index % len(COLOURS)]
        draw.rectangle([(x, HEIGHT - 38), (x + 22, HEIGHT - 26)], fill=colour)
        draw.text((x + 30, HEIGHT - 32), name, fill=INK, font=_font(15), anchor="lm")
        x += 40 + int(draw.textlength(name, font=_font(15)))
    image.save(path, format="PNG")
    return path

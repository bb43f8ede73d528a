"""Content-aware crop positions: where a ``cover`` crop window keeps the interesting part.

Both strategies work on a reduced copy of the image (longest side at most 256 px, box
filtered, transparent areas composited onto mid-grey so they carry no information) and map the
result back to full-size coordinates.

``entropy`` (sharp's ``entropy``, libvips ``VIPS_INTERESTING_ENTROPY``): starting from the whole
image, repeatedly take a slice off whichever edge of the remaining region has the lower Shannon
entropy of its luminance histogram (half a slice off each edge when they tie) until the region
is the size of the window.

``attention`` (sharp's ``attention``, libvips ``VIPS_INTERESTING_ATTENTION``): build a salience
map from edge strength (Sobel of luminance), skin-tone pixels and strongly saturated pixels,
and choose the window position whose sum of salience is highest. Positions that score within
half a percent of the best count as equally good; of those the middle one is taken, so a subject
smaller than the window is centred in it instead of being pushed against one of its edges.

An image with no information anywhere (every score equal) gets the centred window.
"""

from __future__ import annotations

import math
from array import array
from typing import Final

from PIL import Image, ImageChops, ImageFilter

__all__ = ["attention_offset", "entropy_offset"]

# Longest side of the reduced copy both strategies look at. Offsets are found to about
# ``max(width, height) / _WORK_SIDE`` full-size pixels, which is far finer than the scale at
# which "where the subject is" means anything, and the copy costs one box-filter pass.
_WORK_SIDE: Final = 256

# attention: window positions scoring at least ``(1 - _PLATEAU) * best`` tie.
_PLATEAU: Final = 0.005

_WORKING_MODES: Final = frozenset({"L", "LA", "RGB", "RGBA"})
_GREY: Final = 128
# Fractions of a reduced pixel below this are rounding error, not a slice left to trim.
_EPSILON: Final = 1e-6

# entropy: the region is trimmed in about this many slices along the axis with most to trim
# (libvips uses 8; more, thinner slices place the window more precisely for little cost).
_ENTROPY_STEPS: Final = 16
# entropy: luminance is binned into 256 / _ENTROPY_BIN levels, so that sensor and JPEG noise
# on a flat area (sky, wall) does not look like information.
_ENTROPY_BIN: Final = 8
_ENTROPY_LUT: Final = [v // _ENTROPY_BIN for v in range(256)]
_ENTROPY_LEVELS: Final = 256 // _ENTROPY_BIN

# attention: Sobel kernels. Pillow divides by ``scale`` and adds ``offset`` and clips to 0..255,
# so the signed gradient is stored as 128 + G / 4 and _ABS turns it back into min(|G| / 2, 255)
# less a small noise floor (gradients that weak are grain, not structure).
_SOBEL_X: Final = ImageFilter.Kernel((3, 3), [-1, 0, 1, -2, 0, 2, -1, 0, 1], scale=4, offset=128)
_SOBEL_Y: Final = ImageFilter.Kernel((3, 3), [-1, -2, -1, 0, 0, 0, 1, 2, 1], scale=4, offset=128)
_EDGE_FLOOR: Final = 8
_ABS: Final = [max(0, min(255, abs(v - 128) * 2) - _EDGE_FLOOR) for v in range(256)]

# attention: skin tones as a box in YCbCr (Chai & Ngan's Cb 77-127, Cr 133-173), not too dark.
# libvips uses a box in Lab's a*b* instead; YCbCr is what Pillow converts to natively.
_SKIN_Y: Final = [255 if v >= 40 else 0 for v in range(256)]
_SKIN_CB: Final = [255 if 77 <= v <= 127 else 0 for v in range(256)]
_SKIN_CR: Final = [255 if 133 <= v <= 173 else 0 for v in range(256)]

# attention: saturation is chroma, max(R, G, B) - min(R, G, B), ramped from 0 at 120 to 255 at
# 180: about libvips' "LCh chroma above 60", so muted colours (sky, foliage, skin) do not count.
_SAT_LOW: Final = 120
_SAT_HIGH: Final = 180
_SATURATION: Final = [
    max(0, min(255, (v - _SAT_LOW) * 255 // (_SAT_HIGH - _SAT_LOW))) for v in range(256)
]

# attention: when both axes are trimmed the salience map is summed into at most this many
# cells, so the pure-Python search over window positions stays at a few thousand candidates.
_MAX_CELLS_2D: Final = 20 * 20


def entropy_offset(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the ``size`` window that keeps the region of highest entropy.

    Trims the image towards ``size`` a slice at a time, each time from the edge whose slice has
    the lower Shannon entropy of its luminance histogram. ``image`` (L, LA, RGB or RGBA) is not
    modified; transparent pixels count as flat grey.
    """
    _check(image, size)
    if size == image.size:
        return 0, 0
    work = _working_copy(image).convert("L").point(_ENTROPY_LUT)
    sx = work.width / image.width
    sy = work.height / image.height
    # The region still kept, in the reduced copy's (fractional) pixels.
    left, top = 0.0, 0.0
    width, height = float(work.width), float(work.height)
    target_w, target_h = size[0] * sx, size[1] * sy
    step = max(1.0, (width - target_w) / _ENTROPY_STEPS, (height - target_h) / _ENTROPY_STEPS)
    while width - target_w > _EPSILON or height - target_h > _EPSILON:
        cut = min(width - target_w, step)
        if cut > _EPSILON:
            first = _entropy(work, (left, top, left + cut, top + height))
            last = _entropy(work, (left + width - cut, top, left + width, top + height))
            left += cut * _first_share(first, last)
            width -= cut
        cut = min(height - target_h, step)
        if cut > _EPSILON:
            first = _entropy(work, (left, top, left + width, top + cut))
            last = _entropy(work, (left, top + height - cut, left + width, top + height))
            top += cut * _first_share(first, last)
            height -= cut
    left_px = _full_size(left / sx, image.width - size[0])
    return left_px, _full_size(top / sy, image.height - size[1])


def attention_offset(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the ``size`` window that keeps the most salient region.

    Salience is edge strength of the luminance plus skin-tone pixels plus strongly saturated
    pixels; the window with the highest total wins (the middle one of a run of equally good
    positions). ``image`` (L, LA, RGB or RGBA) is not modified; transparent pixels count as flat
    grey.
    """
    _check(image, size)
    if size == image.size:
        return 0, 0
    work = _working_copy(image)
    # Sum the map into cells: one cell across an axis that is not trimmed, one per reduced
    # pixel along a trimmed one (fewer when both are, to bound the search below).
    cols = work.width if size[0] < image.width else 1
    rows = work.height if size[1] < image.height else 1
    if cols * rows > _MAX_CELLS_2D:
        shrink = math.sqrt(cols * rows / _MAX_CELLS_2D)
        cols, rows = max(1, round(cols / shrink)), max(1, round(rows / shrink))
    cells = [0.0] * (cols * rows)
    for band in _salience(work):
        # Mode F so that a thin detail is not rounded away by an 8-bit mean.
        means = band.convert("F").resize((cols, rows), Image.Resampling.BOX)
        # Mode F's raw data is native float32.
        cells = [c + m for c, m in zip(cells, array("f", means.tobytes()), strict=True)]
    tx, ty = _best_window(
        cells, cols, rows, size[0] * cols / image.width, size[1] * rows / image.height
    )
    return (
        _full_size(tx * image.width / cols, image.width - size[0]),
        _full_size(ty * image.height / rows, image.height - size[1]),
    )


def _check(image: Image.Image, size: tuple[int, int]) -> None:
    if image.mode not in _WORKING_MODES:
        raise ValueError(f"smart crop needs an L, LA, RGB or RGBA image, not {image.mode}")
    width, height = size
    if not (1 <= width <= image.width and 1 <= height <= image.height):
        raise ValueError(f"crop window {width}x{height} does not fit in {image.size}")


def _working_copy(image: Image.Image) -> Image.Image:
    """A small L or RGB copy of ``image``, transparency composited onto mid-grey."""
    scale = min(1.0, _WORK_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # BOX averages every source pixel (so detail smaller than a reduced pixel still moves its
    # mean) and is SIMD in pillow-simd; resize() premultiplies alpha for LA/RGBA itself.
    small = image.resize(size, Image.Resampling.BOX) if size != image.size else image
    if small.mode in ("L", "RGB"):
        return small
    mode = small.mode[:-1]
    flat = Image.new(mode, small.size, _GREY if mode == "L" else (_GREY,) * 3)
    flat.paste(small.convert(mode), mask=small.getchannel("A"))
    return flat


def _entropy(image: Image.Image, box: tuple[float, float, float, float]) -> float:
    """Shannon entropy (bits) of the binned luminance inside ``box`` (at least a pixel)."""
    x0, y0 = min(int(box[0]), image.width - 1), min(int(box[1]), image.height - 1)
    x1 = min(image.width, max(x0 + 1, round(box[2])))
    y1 = min(image.height, max(y0 + 1, round(box[3])))
    counts = image.crop((x0, y0, x1, y1)).histogram()[:_ENTROPY_LEVELS]
    total = sum(counts)
    weighted = sum(c * math.log2(c) for c in counts if c)
    return math.log2(total) - weighted / total


def _first_share(first: float, last: float) -> float:
    """How much of a cut comes off the first (left/top) edge: all, none, or half on a tie."""
    if math.isclose(first, last, rel_tol=1e-9, abs_tol=1e-9):
        return 0.5
    return 1.0 if first < last else 0.0


def _salience(work: Image.Image) -> list[Image.Image]:
    """The attention map's bands (mode L, 0..255 each): edges, then skin and saturation.

    The bands need not share a size: each is only ever averaged over fractions of the image.
    """
    luma = work if work.mode == "L" else work.convert("L")
    gx = luma.filter(_SOBEL_X).point(_ABS)
    gy = luma.filter(_SOBEL_Y).point(_ABS)
    # Pillow copies the outermost ring of pixels instead of filtering it: blank it.
    edges = Image.new("L", luma.size, 0)
    if luma.width > 2 and luma.height > 2:
        inner = (1, 1, luma.width - 1, luma.height - 1)
        edges.paste(ImageChops.add(gx, gy, scale=2.0).crop(inner), inner[:2])
    if work.mode == "L":
        return [edges]
    # Skin and saturation are per-pixel tests whose window means are all that is used: half
    # the resolution gives the same means for a third of the cost.
    if min(work.size) >= 32:
        work = work.reduce(2)
    y, cb, cr = work.convert("YCbCr").split()
    skin = ImageChops.multiply(
        y.point(_SKIN_Y), ImageChops.multiply(cb.point(_SKIN_CB), cr.point(_SKIN_CR))
    )
    r, g, b = work.split()
    chroma = ImageChops.subtract(
        ImageChops.lighter(ImageChops.lighter(r, g), b),
        ImageChops.darker(ImageChops.darker(r, g), b),
    )
    return [edges, skin, chroma.point(_SATURATION)]


def _best_window(
    cells: list[float], cols: int, rows: int, width: float, height: float
) -> tuple[float, float]:
    """Offset (in cells, fractional) of the ``width`` x ``height`` window of highest sum.

    The cells are treated as constant densities, so a window's sum is exact for fractional
    positions and sizes, and its maximum lies where a window edge meets a cell edge: only
    those positions (and the centred one) are scored.
    """
    xs = _positions(cols, width)
    ys = _positions(rows, height)
    if len(ys) > len(xs):
        # The search below loops in Python once per y position: make y the axis with fewer.
        by_column = [cells[j * cols + i] for i in range(cols) for j in range(rows)]
        y, x = _best_window(by_column, rows, cols, height, width)
        return x, y
    # Summed-area table, rows + 1 lines of cols + 1: table[j][i] = sum of the cells above-left.
    table = [[0.0] * (cols + 1)]
    for j in range(rows):
        running = 0.0
        line = [0.0]
        for cell, above in zip(cells[j * cols : (j + 1) * cols], table[j][1:], strict=True):
            running += cell
            line.append(above + running)
        table.append(line)

    def sums(lefts: list[float], tops: list[float]) -> list[tuple[float, float, float]]:
        # (sum, x, y) of the window at each (x, y): first the strips of columns [x, x + width)
        # line by line, then each strip between lines y and y + height.
        strips = [_spans(line, lefts, width) for line in table]
        found = []
        for y in tops:
            above, below = _between(strips, y), _between(strips, y + height)
            found += [(b - a, x, y) for a, b, x in zip(above, below, lefts, strict=True)]
        return found

    scored = sums(xs, ys)
    best = max(score for score, _, _ in scored)
    floor = best - max(best * _PLATEAU, 1e-9 * table[rows][cols], 1e-12)
    good = [(x, y) for score, x, y in scored if score >= floor]
    # The middle of the equally good positions; if that is not itself one of them (two
    # separate good regions), the good position nearest to it.
    mid_x = (min(x for x, _ in good) + max(x for x, _ in good)) / 2
    mid_y = (min(y for _, y in good) + max(y for _, y in good)) / 2
    if sums([mid_x], [mid_y])[0][0] >= floor:
        return mid_x, mid_y
    return min(good, key=lambda p: ((p[0] - mid_x) ** 2 + (p[1] - mid_y) ** 2, p))


def _between(lines: list[list[float]], y: float) -> list[float]:
    """``lines`` (at y = 0, 1, 2, ...) linearly interpolated at ``y``."""
    j = min(int(y), len(lines) - 2)
    f = y - j
    return [a + (b - a) * f for a, b in zip(lines[j], lines[j + 1], strict=True)]


def _spans(cumulative: list[float], starts: list[float], length: float) -> list[float]:
    """Sum over ``[start, start + length)`` for each start, from a cumulative-sum list.

    Linear interpolation between entries is exact: the cells are constant densities.
    """
    last = len(cumulative) - 2
    out = []
    for start in starts:
        end = start + length
        i, j = min(int(start), last), min(int(end), last)
        lo = cumulative[i] + (cumulative[i + 1] - cumulative[i]) * (start - i)
        hi = cumulative[j] + (cumulative[j + 1] - cumulative[j]) * (end - j)
        out.append(hi - lo)
    return out


def _positions(cells: int, length: float) -> list[float]:
    """Window offsets worth scoring along one axis: an edge on a cell edge, or centred."""
    room = cells - length
    if room <= 1e-9:
        return [0.0]
    found = {0.0, room, room / 2}
    for i in range(1, cells):
        for x in (float(i), i - length):
            if 0 < x < room:
                found.add(x)
    return sorted(found)


def _full_size(offset: float, room: int) -> int:
    """``offset`` rounded to a pixel (an exact half down, as ``room // 2`` centres) and clamped."""
    return min(room, max(0, math.floor(offset + 0.5 - 1e-6)))

"""Pixel operations: exact resize, aspect-keeping thumbnail, orientation, mode and alpha handling.

Every operation is ``op(image, size, ...) -> Image`` and returns a new image. Resampling is
LANCZOS after an integer pre-reduction (``reducing_gap``); JPEG sources are additionally
decoded at a reduced DCT scale by :func:`imaging.codec.decode_first_frame`, asked for at
least ``DRAFT_GAP`` times the target size (see :func:`draft_size`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from PIL import Image

__all__ = [
    "DRAFT_GAP",
    "REDUCING_GAP",
    "RESAMPLE",
    "draft_size",
    "fit_size",
    "flatten",
    "orient",
    "orient_by",
    "oriented_size",
    "resize",
    "thumbnail",
    "to_working_mode",
]

RESAMPLE: Final = Image.Resampling.LANCZOS

#: ``Image.resize(reducing_gap=...)``: box-reduce by an integer factor while the rest of the
#: way still shrinks at least this much, then LANCZOS. Chosen by measurement (see process.py).
REDUCING_GAP: Final = 2.0

#: JPEG ``draft()``: decode at the smallest DCT scale still at least this many times the
#: target size. Chosen by measurement (see process.py).
DRAFT_GAP: Final = 1.25

WHITE: Final = (255, 255, 255)

# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_PREMULTIPLIED: Final = {"RGBA": "RGBa", "LA": "La"}
_UNPREMULTIPLIED: Final = {"RGBa": "RGBA", "La": "LA"}
_WORKING_MODES: Final = frozenset({"L", "LA", "RGB", "RGBA"})


def fit_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` shrunk to fit inside ``box`` keeping its aspect ratio; never enlarged.

    Rounds exactly like ``Image.thumbnail``: of floor and ceil, the one whose aspect ratio is
    closer to the original's, and at least 1.
    """
    width, height = size
    x, y = box
    if x >= width and y >= height:
        return size
    aspect = width / height
    if x / y >= aspect:
        return _round_aspect(y * aspect, lambda n: abs(aspect - n / y)), y
    return x, _round_aspect(x / aspect, lambda n: 0 if n == 0 else abs(aspect - x / n))


def _round_aspect(number: float, error: Callable[[int], float]) -> int:
    return max(min(math.floor(number), math.ceil(number), key=error), 1)


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``size`` as seen after applying EXIF ``orientation`` (5-8 swap the axes).

    Swapping is its own inverse, so this also maps a displayed size back to a stored one.
    """
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def draft_size(target: tuple[float, float]) -> tuple[int, int]:
    """The smallest decoded size to ask JPEG ``draft()`` for, to resample well to ``target``."""
    return (math.ceil(target[0] * DRAFT_GAP), math.ceil(target[1] * DRAFT_GAP))


def to_working_mode(image: Image.Image) -> Image.Image:
    """``image`` in L, LA, RGB or RGBA: the modes we resample and encode.

    Transparency entries (P, L, RGB with tRNS or a GIF transparent index) become an alpha
    channel, since a palette image cannot be resampled; 16-bit and 32-bit greys are scaled
    to 8 bits; CMYK and the other colour spaces are converted to RGB (any CMYK ICC profile
    then no longer applies: the encoder only keeps a profile that matches the output mode).
    Returns ``image`` itself when it is already in a working mode without transparency.
    """
    mode = image.mode
    transparent = image.info.get("transparency") is not None
    if mode in _WORKING_MODES:
        return image.convert(mode + "A") if transparent and mode in ("L", "RGB") else image
    if mode in _UNPREMULTIPLIED:
        return image.convert(_UNPREMULTIPLIED[mode])
    if mode in ("P", "PA"):
        return image.convert("RGBA" if transparent or mode == "PA" else "RGB")
    if mode == "1":
        return image.convert("LA" if transparent else "L")
    if mode.startswith("I") or mode == "F":
        wide = image if mode == "I" else image.convert("I")
        # 0..65535 -> 0..255; convert("L") alone would clip everything above 255 to white.
        return wide.point(lambda value: value / 257).convert("L")
    return image.convert("RGB")


def resize(
    image: Image.Image,
    size: tuple[int, int],
    *,
    box: tuple[float, float, float, float] | None = None,
    reducing_gap: float | None = REDUCING_GAP,
) -> Image.Image:
    """``image`` (or its ``box`` region) resampled to exactly ``size`` with LANCZOS.

    Alpha is premultiplied around the resampling (as Pillow does) but, unlike Pillow's
    ``resize`` for RGBA/LA, ``reducing_gap`` is honoured for images with alpha too.
    """
    if size == image.size and box in (None, (0, 0, image.width, image.height)):
        return image.copy()
    if image.mode in _PREMULTIPLIED:
        premultiplied = image.convert(_PREMULTIPLIED[image.mode])
        resized = premultiplied.resize(size, RESAMPLE, box=box, reducing_gap=reducing_gap)
        return resized.convert(image.mode)
    return image.resize(size, RESAMPLE, box=box, reducing_gap=reducing_gap)


def thumbnail(
    image: Image.Image, size: tuple[int, int], *, reducing_gap: float | None = REDUCING_GAP
) -> Image.Image:
    """A new image fitting inside ``size`` with ``image``'s aspect ratio, never enlarged."""
    target = fit_size(image.size, size)
    if target == image.size:
        return image.copy()
    return resize(image, target, reducing_gap=reducing_gap)


def orient(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` transposed as EXIF ``orientation`` says, to display upright.

    Orientation 1 (or an invalid value) returns ``image`` itself, not a copy.
    """
    return orient_by(image, _TRANSPOSE.get(orientation))


def orient_by(image: Image.Image, method: Image.Transpose | None) -> Image.Image:
    """``image`` transposed by ``method``; None returns ``image`` itself."""
    return image if method is None else image.transpose(method)


def flatten(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """``image`` composited onto an opaque ``background``: RGBA -> RGB, LA -> L.

    Images without alpha are returned as they are.
    """
    if image.mode == "RGBA":
        base = Image.new("RGB", image.size, background)
        base.paste(image, mask=image.getchannel("A"))
        return base
    if image.mode == "LA":
        grey = round(0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2])
        base = Image.new("L", image.size, grey)
        base.paste(image.getchannel("L"), mask=image.getchannel("A"))
        return base
    return image

"""One pure function per step: ``op(image, step) -> Image``, a new image out.

Images come in the working modes (L, LA, RGB, RGBA). Filters that mix neighbouring pixels
(blur) work on premultiplied alpha, so transparent pixels do not bleed their colour; filters
that change colours (sharpen, modulate) leave alpha as it is. Geometry comes from
:mod:`imaging.geometry`, the same functions the service plans with.
"""

from __future__ import annotations

import functools
import os
from typing import Final

from PIL import Image, ImageChops, ImageFilter

from imaging import geometry, ops, smartcrop
from imaging.document import (
    Blur,
    Color,
    Crop,
    Extend,
    Flip,
    Flop,
    Grayscale,
    Modulate,
    Resize,
    Rotate,
    Sharpen,
    Step,
    Trim,
    Watermark,
)
from imaging.errors import UnsupportedFormat

__all__ = [
    "apply",
    "blur",
    "crop",
    "extend",
    "finish_resize",
    "grayscale",
    "modulate",
    "parse_color",
    "resize",
    "rotate",
    "sharpen",
    "trim",
    "watermark",
]

RGBA = tuple[int, int, int, int]
_ALPHA_OF: Final = {"L": "LA", "RGB": "RGBA"}
_COLOUR_OF: Final = {"L": "RGB", "LA": "RGBA"}
_PREMULTIPLIED: Final = {"RGBA": "RGBa", "LA": "La"}


def parse_color(color: Color) -> RGBA:
    """``"#rrggbb"``, ``"#rrggbbaa"``, ``[r, g, b]`` or ``[r, g, b, a]`` as RGBA."""
    if isinstance(color, str):
        digits = color[1:]
        values = [int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)]
    else:
        values = list(color)
    if len(values) == 3:
        values.append(255)
    r, g, b, a = values
    return (r, g, b, a)


def _for_background(image: Image.Image, color: RGBA) -> tuple[Image.Image, int | tuple[int, ...]]:
    """``image`` in a mode that can show ``color``, and ``color`` as a fill for that mode."""
    r, g, b, a = color
    if a < 255 and image.mode in _ALPHA_OF:
        image = image.convert(_ALPHA_OF[image.mode])
    if not r == g == b and image.mode in _COLOUR_OF:
        image = image.convert(_COLOUR_OF[image.mode])
    grey = round(0.299 * r + 0.587 * g + 0.114 * b)
    fills: dict[str, int | tuple[int, ...]] = {
        "L": grey,
        "LA": (grey, a),
        "RGB": (r, g, b),
        "RGBA": (r, g, b, a),
    }
    return image, fills[image.mode]


def _pad(
    image: Image.Image, canvas: tuple[int, int], at: tuple[int, int], color: RGBA
) -> Image.Image:
    image, fill = _for_background(image, color)
    base = Image.new(image.mode, canvas, fill)
    base.paste(image, at)
    return base


def resize(image: Image.Image, step: Resize) -> Image.Image:
    """The resize step on pixels (when it was not folded into decoding)."""
    plan = geometry.plan_resize(image.size, step)
    return finish_resize(ops.resize(image, plan.scaled), step, plan)


def finish_resize(scaled: Image.Image, step: Resize, plan: geometry.ResizePlan) -> Image.Image:
    """What a resize does after scaling: keep its window (cover) or pad to the box (contain)."""
    if plan.window is not None:
        x, y, width, height = plan.window
        if plan.smart == "entropy":
            x, y = smartcrop.entropy_offset(scaled, (width, height))
        elif plan.smart == "attention":
            x, y = smartcrop.attention_offset(scaled, (width, height))
        if (width, height) == scaled.size:
            return scaled
        return scaled.crop((x, y, x + width, y + height))
    if plan.offset is not None:
        return _pad(scaled, plan.size, plan.offset, parse_color(step.background))
    return scaled


def crop(image: Image.Image, step: Crop) -> Image.Image:
    return image.crop(geometry.crop_box(image.size, step))


def rotate(image: Image.Image, step: Rotate) -> Image.Image:
    """Quarter turns transpose; any other angle resamples (bicubic) onto a larger canvas."""
    quarters = geometry.quarter_turns(step.angle)
    if quarters is not None:
        turn = geometry.Orientation().turned(quarters).transpose
        return image.copy() if turn is None else image.transpose(turn)
    canvas, matrix = geometry.rotation(image.size, step.angle)
    image, fill = _for_background(image, parse_color(step.background))
    return image.transform(
        canvas, Image.Transform.AFFINE, matrix, Image.Resampling.BICUBIC, fillcolor=fill
    )


def blur(image: Image.Image, step: Blur) -> Image.Image:
    if image.mode in _PREMULTIPLIED:
        premultiplied = image.convert(_PREMULTIPLIED[image.mode])
        return premultiplied.filter(ImageFilter.GaussianBlur(step.sigma)).convert(image.mode)
    return image.filter(ImageFilter.GaussianBlur(step.sigma))


def _colour_only(image: Image.Image, change: ImageFilter.Filter | None = None) -> Image.Image:
    """``change`` applied to the colour bands, alpha kept as it is."""
    if image.mode not in ("LA", "RGBA"):
        return image.filter(change) if change else image
    colour = image.convert(image.mode[:-1])
    changed = colour.filter(change) if change else colour
    changed.putalpha(image.getchannel("A"))
    return changed


def sharpen(image: Image.Image, step: Sharpen) -> Image.Image:
    """Unsharp mask of the colour bands."""
    mask = ImageFilter.UnsharpMask(radius=step.sigma, percent=round(step.amount * 100), threshold=0)
    return _colour_only(image, mask)


def grayscale(image: Image.Image, step: Grayscale | None = None) -> Image.Image:
    if image.mode in ("L", "LA"):
        return image.copy()
    return image.convert("LA" if image.mode == "RGBA" else "L")


def modulate(image: Image.Image, step: Modulate) -> Image.Image:
    """Saturation blends with the grey image; brightness scales, contrast scales around mid
    grey (128). All three are per pixel, so they commute with resizing."""
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    colour = image.convert(image.mode[:-1]) if alpha is not None else image
    if step.saturation != 1.0 and colour.mode == "RGB":
        grey = colour.convert("L").convert("RGB")
        colour = Image.blend(grey, colour, step.saturation)
    if step.brightness != 1.0 or step.contrast != 1.0:
        gain, contrast = step.brightness, step.contrast
        table = [min(255, max(0, round(((v * gain) - 128) * contrast + 128))) for v in range(256)]
        colour = colour.point(table * len(colour.getbands()))
    elif colour is image:
        colour = image.copy()
    if alpha is not None:
        colour.putalpha(alpha)
    return colour


def extend(image: Image.Image, step: Extend) -> Image.Image:
    width = image.width + step.left + step.right
    height = image.height + step.top + step.bottom
    return _pad(image, (width, height), (step.left, step.top), parse_color(step.background))


def trim(image: Image.Image, step: Trim) -> Image.Image:
    """Cut away the borders within ``threshold`` of the top-left pixel (on every band); an
    image that is all border is left whole."""
    corner = image.getpixel((0, 0))
    background = Image.new(image.mode, image.size, corner)
    difference = ImageChops.difference(image, background)
    bands = difference.split()
    most = functools.reduce(ImageChops.lighter, bands[1:], bands[0])
    box = most.point(lambda value: 255 if value > step.threshold else 0).getbbox()
    if box is None or box == (0, 0, image.width, image.height):
        return image.copy()
    return image.crop(box)


@functools.lru_cache(maxsize=4)
def _watermark_image(path: str, mtime_ns: int) -> Image.Image:
    with Image.open(path) as mark:
        if mark.format not in ("PNG", "WEBP", "GIF", "JPEG"):
            raise UnsupportedFormat("the watermark image must be PNG, WebP, GIF or JPEG")
        return mark.convert("RGBA")


def load_watermark(path: str) -> Image.Image:
    """The watermark at ``path`` as RGBA, read once per process (again if it changes)."""
    return _watermark_image(path, os.stat(path).st_mtime_ns)


def watermark(image: Image.Image, step: Watermark, mark: Image.Image) -> Image.Image:
    """``mark`` scaled to ``scale`` of the image's width, at ``position`` within ``margin``
    of the edges, at ``opacity``."""
    width = max(1, round(image.width * step.scale))
    height = max(1, round(mark.height * width / mark.width))
    scaled = ops.resize(mark, (width, height))
    alpha = scaled.getchannel("A").point(lambda value: round(value * step.opacity))
    scaled.putalpha(alpha)
    free_x = max(0, image.width - width - 2 * step.margin)
    free_y = max(0, image.height - height - 2 * step.margin)
    x, y = geometry.anchor(step.position, (free_x, free_y))
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    layer.paste(scaled, (x + step.margin, y + step.margin))  # clipped at the edges
    marked = Image.alpha_composite(image.convert("RGBA"), layer)
    return marked if image.mode == "RGBA" else marked.convert(image.mode)


def apply(image: Image.Image, step: Step, *, watermark_path: str | None) -> Image.Image:
    """Run one step on ``image``."""
    if isinstance(step, Resize):
        return resize(image, step)
    if isinstance(step, Crop):
        return crop(image, step)
    if isinstance(step, Rotate):
        return rotate(image, step)
    if isinstance(step, Flip):
        return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if isinstance(step, Flop):
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if isinstance(step, Blur):
        return blur(image, step)
    if isinstance(step, Sharpen):
        return sharpen(image, step)
    if isinstance(step, Grayscale):
        return grayscale(image, step)
    if isinstance(step, Modulate):
        return modulate(image, step)
    if isinstance(step, Extend):
        return extend(image, step)
    if isinstance(step, Trim):
        return trim(image, step)
    if watermark_path is None:
        raise geometry.WatermarkMissing()
    return watermark(image, step, load_watermark(watermark_path))

"""Geometry from the header alone: every step's output size, crop boxes and resize placement.

The service plans a job at submit (``POST /jobs?dry_run=true`` answers with the plan) and the
worker runs it through the very same functions, so the planned size is the size produced.
Sizes are in displayed (EXIF-oriented) pixels. :class:`Orientation` is the dihedral group of
the eight EXIF orientations, so that a chain of crops, flips and quarter turns can be folded
into one region of the stored image and one transpose of the (small) result.
"""

from __future__ import annotations

import math
from typing import ClassVar, Final, NamedTuple

import msgspec
from PIL import Image

from imaging.document import (
    Crop,
    Extend,
    FocalPoint,
    Position,
    Resize,
    Rotate,
    Step,
    Trim,
    Watermark,
)
from imaging.errors import ImagingError
from imaging.ops import fit_size

__all__ = [
    "CropOutsideImage",
    "GeometryError",
    "Orientation",
    "OutputTooLarge",
    "Plan",
    "ResizePlan",
    "WatermarkMissing",
    "anchor",
    "crop_box",
    "plan",
    "plan_resize",
    "quarter_turns",
    "rotation",
]

Size = tuple[int, int]
Box = tuple[float, float, float, float]

_COMPASS: Final = {
    "centre": (0.5, 0.5),
    "center": (0.5, 0.5),
    "north": (0.5, 0.0),
    "northeast": (1.0, 0.0),
    "east": (1.0, 0.5),
    "southeast": (1.0, 1.0),
    "south": (0.5, 1.0),
    "southwest": (0.0, 1.0),
    "west": (0.0, 0.5),
    "northwest": (0.0, 0.0),
}


class GeometryError(ImagingError):
    """The steps cannot be applied to an image of this size."""

    code: ClassVar[str] = "invalid_geometry"


class CropOutsideImage(GeometryError):
    code: ClassVar[str] = "crop_outside_image"


class OutputTooLarge(GeometryError):
    code: ClassVar[str] = "output_too_large"


class WatermarkMissing(GeometryError):
    code: ClassVar[str] = "watermark_not_configured"
    default_message: ClassVar[str] = "no watermark image is configured (WATERMARK_PATH)"


class Orientation(NamedTuple):
    """How stored pixels are displayed: swap the axes, then mirror x and/or y."""

    swap: bool = False
    mirror_x: bool = False
    mirror_y: bool = False

    @classmethod
    def from_exif(cls, orientation: int) -> Orientation:
        return _EXIF.get(orientation, IDENTITY)

    def displayed(self, size: Size) -> Size:
        return (size[1], size[0]) if self.swap else size

    def flopped(self) -> Orientation:
        return self._replace(mirror_x=not self.mirror_x)

    def flipped(self) -> Orientation:
        return self._replace(mirror_y=not self.mirror_y)

    def turned(self, quarters: int) -> Orientation:
        """Then rotated clockwise by ``quarters`` quarter turns."""
        result = self
        for _ in range(quarters % 4):
            # Clockwise: swap the axes, then mirror x in the new frame.
            result = Orientation(not result.swap, not result.mirror_y, result.mirror_x)
        return result

    def to_stored(self, box: Box, displayed: Size) -> Box:
        """A box in displayed pixels (of an image displayed at ``displayed``) as a box
        relative to the stored region."""
        x0, y0, x1, y1 = box
        if self.mirror_x:
            x0, x1 = displayed[0] - x1, displayed[0] - x0
        if self.mirror_y:
            y0, y1 = displayed[1] - y1, displayed[1] - y0
        return (y0, x0, y1, x1) if self.swap else (x0, y0, x1, y1)

    @property
    def transpose(self) -> Image.Transpose | None:
        """The Pillow transpose that displays a stored image, or None for identity."""
        return _TRANSPOSE[self]


IDENTITY: Final = Orientation()
_EXIF: Final = {
    2: Orientation(False, True, False),
    3: Orientation(False, True, True),
    4: Orientation(False, False, True),
    5: Orientation(True, False, False),
    6: Orientation(True, True, False),
    7: Orientation(True, True, True),
    8: Orientation(True, False, True),
}
_TRANSPOSE: Final = {
    IDENTITY: None,
    Orientation(False, True, False): Image.Transpose.FLIP_LEFT_RIGHT,
    Orientation(False, False, True): Image.Transpose.FLIP_TOP_BOTTOM,
    Orientation(False, True, True): Image.Transpose.ROTATE_180,
    Orientation(True, False, False): Image.Transpose.TRANSPOSE,
    Orientation(True, True, False): Image.Transpose.ROTATE_270,
    Orientation(True, False, True): Image.Transpose.ROTATE_90,
    Orientation(True, True, True): Image.Transpose.TRANSVERSE,
}


class ResizePlan(NamedTuple):
    """A resize step on an image of known size.

    The whole image is scaled to ``scaled``; ``window`` (x, y, w, h) of that is kept (cover),
    at an offset decided by the content when ``smart`` names a strategy; or the scaled image
    is placed at ``offset`` on a canvas of ``size`` (contain). ``size`` is the result.
    """

    scaled: Size
    window: tuple[int, int, int, int] | None
    smart: str | None
    offset: Size | None
    size: Size


def _scale(size: Size, box: Size, *, cover: bool) -> Size:
    """``size`` scaled to fit inside (or cover) ``box``, keeping its aspect ratio: the
    bounding side equals the box's. Shrinking inside rounds as ``Image.thumbnail`` does
    (the seed's thumbnail)."""
    width, height = size
    wider_box = box[0] / box[1] >= width / height
    if cover:
        if wider_box:
            return (box[0], _side(height * box[0] / width))
        return (_side(width * box[1] / height), box[1])
    if box[0] < width or box[1] < height:
        return fit_size(size, box)
    if wider_box:
        return (_side(width * box[1] / height), box[1])
    return (box[0], _side(height * box[0] / width))


def _side(value: float) -> int:
    return max(1, round(value))


def anchor(position: Position, free: Size) -> Size:
    """The offset of a window within ``free`` spare pixels on each axis, for a compass or
    focal position (content-aware positions are decided later, from the pixels)."""
    if isinstance(position, FocalPoint):
        fx, fy = position.x, position.y
    else:
        fx, fy = _COMPASS.get(position, (0.5, 0.5))
    return (math.floor(free[0] * fx), math.floor(free[1] * fy))


def _focal_anchor(point: FocalPoint, scaled: Size, window: Size) -> Size:
    """The window centred on the focal point, moved inside the image."""
    left = round(point.x * scaled[0] - window[0] / 2)
    top = round(point.y * scaled[1] - window[1] / 2)
    return (
        min(max(left, 0), scaled[0] - window[0]),
        min(max(top, 0), scaled[1] - window[1]),
    )


def resize_box(size: Size, step: Resize) -> Size:
    """The box a resize step asks for; one side alone keeps the aspect ratio."""
    width, height = size
    if step.width is not None and step.height is not None:
        return (step.width, step.height)
    if step.width is not None:
        return (step.width, _side(height * step.width / width))
    if step.height is not None:
        return (_side(width * step.height / height), step.height)
    raise ValueError("a resize step needs a width or a height")


def plan_resize(size: Size, step: Resize) -> ResizePlan:
    """Where a resize step puts the image (see :class:`ResizePlan`)."""
    box = resize_box(size, step)
    width, height = size
    if step.width is None or step.height is None:
        # One side alone: that side exactly, the other in proportion, whatever the fit.
        grows = box[0] > width or box[1] > height
        scaled = size if grows and not step.enlarge else box
        return ResizePlan(scaled, None, None, None, scaled)
    if step.fit == "fill":
        scaled = box if step.enlarge else (min(box[0], width), min(box[1], height))
        return ResizePlan(scaled, None, None, None, scaled)
    if step.fit in ("inside", "contain"):
        fits = box[0] >= width and box[1] >= height
        scaled = size if fits and not step.enlarge else _scale(size, box, cover=False)
        if step.fit == "inside":
            return ResizePlan(scaled, None, None, None, scaled)
        offset = anchor(step.position, (box[0] - scaled[0], box[1] - scaled[1]))
        return ResizePlan(scaled, None, None, offset, box)
    scaled = _scale(size, box, cover=True)
    if not step.enlarge and (scaled[0] > width or scaled[1] > height):
        scaled = size
    if step.fit == "outside":
        return ResizePlan(scaled, None, None, None, scaled)
    window = (min(box[0], scaled[0]), min(box[1], scaled[1]))
    free = (scaled[0] - window[0], scaled[1] - window[1])
    smart = step.position if step.position in ("entropy", "attention") else None
    assert smart is None or isinstance(smart, str)
    if isinstance(step.position, FocalPoint):
        x, y = _focal_anchor(step.position, scaled, window)
    else:
        x, y = anchor(step.position, free)
    return ResizePlan(scaled, (x, y, *window), smart, None, window)


def crop_box(size: Size, step: Crop) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) pixels a crop step keeps of an image of ``size``."""
    width, height = size

    def pixels(value: int | float, whole: int) -> int:
        return round(value * whole) if isinstance(value, float) else value

    left, top = pixels(step.left, width), pixels(step.top, height)
    right, bottom = left + pixels(step.width, width), top + pixels(step.height, height)
    if right <= left or bottom <= top:
        raise CropOutsideImage(f"the crop is empty on an image of {width}x{height}")
    if right > width or bottom > height:
        raise CropOutsideImage(
            f"the crop ({left}, {top}) to ({right}, {bottom}) reaches outside the "
            f"{width}x{height} image"
        )
    return (left, top, right, bottom)


def quarter_turns(angle: float) -> int | None:
    """Clockwise quarter turns for a multiple of 90 degrees, else None."""
    angle %= 360.0
    return int(angle // 90) if angle % 90 == 0 else None


def rotation(size: Size, angle: float) -> tuple[Size, tuple[float, ...]]:
    """The canvas and the affine matrix (output to input) of a clockwise rotation by any
    ``angle``, the canvas expanded to hold the whole image (as ``Image.rotate(expand=True)``
    computes them, so that the planned size is the size produced)."""
    width, height = size
    radians = math.radians(angle % 360.0)  # clockwise here is Pillow's negative angle
    cos, sin = round(math.cos(radians), 15), round(math.sin(radians), 15)
    matrix = [cos, sin, 0.0, -sin, cos, 0.0]

    def apply(x: float, y: float) -> tuple[float, float]:
        return matrix[0] * x + matrix[1] * y + matrix[2], matrix[3] * x + matrix[4] * y + matrix[5]

    centre = (width / 2, height / 2)
    matrix[2], matrix[5] = apply(-centre[0], -centre[1])
    matrix[2] += centre[0]
    matrix[5] += centre[1]
    corners = [apply(x, y) for x, y in ((0, 0), (width, 0), (width, height), (0, height))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    canvas = (math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys)))
    matrix[2], matrix[5] = apply(-(canvas[0] - width) / 2.0, -(canvas[1] - height) / 2.0)
    return canvas, tuple(matrix)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """The size a chain produces; with ``exact`` false (after a ``trim``) it is the most
    it can be, since the size then depends on the pixels."""

    width: int
    height: int
    exact: bool = True


def step_size(size: Size, step: Step) -> Size:
    """The size after ``step`` (for ``trim``: the most it can be)."""
    if isinstance(step, Resize):
        return plan_resize(size, step).size
    if isinstance(step, Crop):
        left, top, right, bottom = crop_box(size, step)
        return (right - left, bottom - top)
    if isinstance(step, Rotate):
        quarters = quarter_turns(step.angle)
        if quarters is None:
            return rotation(size, step.angle)[0]
        return (size[1], size[0]) if quarters % 2 else size
    if isinstance(step, Extend):
        return (size[0] + step.left + step.right, size[1] + step.top + step.bottom)
    return size


def plan(
    steps: list[Step], size: Size, *, max_pixels: int, watermark: bool, path: str = "steps"
) -> Plan:
    """Check ``steps`` against an image displayed at ``size`` and return the result's size.

    Raises :class:`CropOutsideImage` for a crop beyond the image, :class:`OutputTooLarge`
    when any step's result has more than ``max_pixels`` pixels, :class:`WatermarkMissing`
    for a watermark step without a watermark image; messages name the step by ``path``.
    """
    exact = True
    for index, step in enumerate(steps):
        where = f"{path}[{index}] ({type(step).__name__.lower()})"
        if isinstance(step, Watermark) and not watermark:
            raise WatermarkMissing(f"{where}: {WatermarkMissing.default_message}")
        try:
            size = step_size(size, step)
        except GeometryError as exc:
            raise type(exc)(f"{where}: {exc.message}") from None
        if size[0] * size[1] > max_pixels:
            raise OutputTooLarge(
                f"{where}: the result would be {size[0]}x{size[1]} = {size[0] * size[1]:,}"
                f" pixels, over the limit of {max_pixels:,}"
            )
        if isinstance(step, Trim):
            exact = False
    return Plan(width=size[0], height=size[1], exact=exact)

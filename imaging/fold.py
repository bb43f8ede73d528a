"""How much of a chain runs while decoding: leading crops, flips, quarter turns and the first
resize become one region of the stored image, one resampling and one transpose.

A JPEG is then decoded at the smallest DCT scale that still leaves ``DRAFT_GAP`` times the
pixels the first resize keeps (so a crop before a resize decodes less), everything is
resampled once with ``reducing_gap``, and the transpose (EXIF orientation included) happens
on the small result. Per-pixel steps before that resize (``grayscale``, ``modulate``) commute
with it and run after it, on fewer pixels.
"""

from __future__ import annotations

from typing import NamedTuple

from imaging import geometry
from imaging.document import Crop, Flip, Flop, Grayscale, Modulate, Resize, Rotate, Step
from imaging.geometry import Box, Orientation, Size
from imaging.ops import draft_size

__all__ = ["Fold", "fold"]


class Fold(NamedTuple):
    """The decoding part of a chain and what is left of it.

    ``region`` (stored pixels) is resampled to ``target`` (displayed pixels) if set, else
    cut out as it is; then ``orientation`` displays it. ``resize`` is the folded resize step
    and its plan, whose window or padding is still to do after the ``deferred`` steps; then
    ``rest`` runs in order.
    """

    region: Box
    orientation: Orientation
    target: Size | None
    deferred: list[Step]
    resize: tuple[Resize, geometry.ResizePlan] | None
    rest: list[Step]

    def stored_target(self) -> Size | None:
        """``target`` in the stored image's orientation."""
        if self.target is None:
            return None
        return (self.target[1], self.target[0]) if self.orientation.swap else self.target

    def draft_size(self, stored: Size) -> Size | None:
        """The smallest whole decoded image that still resamples ``region`` well."""
        target = self.stored_target()
        if target is None:
            return None
        x0, y0, x1, y1 = self.region
        # The whole image scaled as the region is, then the usual draft margin.
        return draft_size((target[0] * stored[0] / (x1 - x0), target[1] * stored[1] / (y1 - y0)))


def _within(region: Box, relative: Box) -> Box:
    return (
        region[0] + relative[0],
        region[1] + relative[1],
        region[0] + relative[2],
        region[1] + relative[3],
    )


def fold(steps: list[Step], stored: Size, orientation: Orientation) -> Fold:
    """Split ``steps`` for an image of ``stored`` size shown with ``orientation``."""
    region: Box = (0, 0, stored[0], stored[1])
    deferred: list[Step] = []
    for index, step in enumerate(steps):
        # Until the first resize the region has whole-pixel edges.
        displayed = orientation.displayed(
            (round(region[2] - region[0]), round(region[3] - region[1]))
        )
        if isinstance(step, Crop):
            kept: Box = geometry.crop_box(displayed, step)
            region = _within(region, orientation.to_stored(kept, displayed))
        elif isinstance(step, Flip):
            orientation = orientation.flipped()
        elif isinstance(step, Flop):
            orientation = orientation.flopped()
        elif isinstance(step, Rotate) and geometry.quarter_turns(step.angle) is not None:
            orientation = orientation.turned(geometry.quarter_turns(step.angle) or 0)
        elif isinstance(step, Grayscale | Modulate):
            deferred.append(step)
        elif isinstance(step, Resize):
            plan = geometry.plan_resize(displayed, step)
            rest = steps[index + 1 :]
            if plan.window is not None and plan.smart is None:
                # A cover crop at a known place: resample just the window.
                x, y, width, height = plan.window
                sx, sy = displayed[0] / plan.scaled[0], displayed[1] / plan.scaled[1]
                kept = (x * sx, y * sy, (x + width) * sx, (y + height) * sy)
                region = _within(region, orientation.to_stored(kept, displayed))
                return Fold(region, orientation, (width, height), deferred, None, rest)
            return Fold(region, orientation, plan.scaled, deferred, (step, plan), rest)
        else:
            return Fold(region, orientation, None, deferred, None, steps[index:])
    return Fold(region, orientation, None, deferred, None, [])

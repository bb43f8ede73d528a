"""Animated GIF and WebP: every frame through a variant's steps, its timing and loop kept.

Frames are decoded one at a time, each composited onto the ones before it by Pillow (so each
is a whole picture), and held to the pixel limit as they come: the limit counts every frame
(``frames x width x height``), and a frame that declares larger extents than the first fails
the job as too large before it is decoded. Outputs are encoded with Pillow's animated GIF
and WebP writers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import ClassVar, Final

from PIL import Image, ImageFile

from imaging import ops
from imaging.document import Output
from imaging.encode import DEFAULT_QUALITY, Encoded
from imaging.errors import ImageTooLarge, ImagingError, translate_pillow_errors

__all__ = ["ANIMATED_SOURCES", "TooManyFrames", "encode_frames", "frames_of", "is_animated"]

#: Sources whose frames make an animation (a multi-page TIFF's are pages).
ANIMATED_SOURCES: Final = frozenset({"GIF", "WEBP"})
#: A frame that names no duration shows this long, in milliseconds (browsers do the same).
DEFAULT_DURATION_MS: Final = 100


class TooManyFrames(ImagingError):
    """The animation has more frames than ``MAX_FRAMES``."""

    code: ClassVar[str] = "too_many_frames"


def is_animated(image: Image.Image) -> bool:
    return image.format in ANIMATED_SOURCES and getattr(image, "n_frames", 1) > 1


def frames_of(
    image: ImageFile.ImageFile, *, max_frames: int, max_pixels: int
) -> Iterator[tuple[Image.Image, int]]:
    """Every frame of ``image`` (RGBA, a copy) with its duration in milliseconds.

    Raises :class:`TooManyFrames` or :class:`~imaging.errors.ImageTooLarge` before decoding
    anything when the frame count or ``frames x width x height`` is over its limit.
    """
    what = image.format or "image"
    frames: int = getattr(image, "n_frames", 1)
    if frames > max_frames:
        raise TooManyFrames(
            f"the {what} animation has {frames} frames, over the limit of {max_frames}"
        )
    width, height = image.size
    if frames * width * height > max_pixels:
        raise ImageTooLarge(
            f"the {what} animation is {frames} frames of {width}x{height} ="
            f" {frames * width * height:,} pixels, over the limit of {max_pixels:,} pixels"
        )
    for index in range(frames):
        with translate_pillow_errors(what, limit=max_pixels):
            image.seek(index)
            if image.size != (width, height):
                raise ImageTooLarge(
                    f"frame {index} of the {what} animation declares {image.width}x"
                    f"{image.height}, not the animation's {width}x{height}"
                )
            image.load()
        duration = image.info.get("duration")
        frame = ops.to_working_mode(image).convert("RGBA")
        yield frame, int(duration) if isinstance(duration, int | float) else DEFAULT_DURATION_MS


def encode_frames(
    frames: list[Image.Image],
    dst: str,
    *,
    durations: list[int],
    loop: int | None,
    output: Output,
    output_format: str,
    blurhash: Callable[[Image.Image], str] | None = None,
) -> Encoded:
    """Write ``frames`` (RGBA, one size) as an animated GIF or WebP to ``dst``; ``loop`` is
    the source's loop count (0: forever; None: play once)."""
    first, rest = frames[0], frames[1:]
    for frame in frames:
        frame.info.clear()  # no EXIF/XMP/comments from the source
    params: dict[str, object] = {"save_all": True, "append_images": rest, "duration": durations}
    if loop is not None:
        params["loop"] = loop
    if output_format == "gif":
        # Whole frames, so each replaces the last (disposal 2 also clears transparent areas).
        first.save(dst, format="GIF", disposal=2, **params)
    elif output_format == "webp":
        quality = output.quality or DEFAULT_QUALITY["webp"]
        first.save(dst, format="WEBP", quality=quality, lossless=output.lossless, **params)
    else:
        raise ValueError(f"an animation is written as gif or webp, not {output_format}")
    return Encoded(
        format="gif" if output_format == "gif" else "webp",
        width=first.width,
        height=first.height,
        bytes=os.path.getsize(dst),
        blurhash=blurhash(first) if blurhash is not None else None,
    )

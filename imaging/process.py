"""The job entry point, run in a worker process: open, decode, orient, resize, encode.

MEASUREMENTS
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Annotated, Literal

import msgspec
from PIL import Image, ImageFile

from imaging import codec, ops
from imaging.codec import DEFAULT_ALLOWED_FORMATS, OutputFormat
from imaging.errors import ImageTooLarge, translate_pillow_errors

__all__ = ["JobSpec", "Result", "configure_pillow", "process"]


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to do with one image. Sizes are in displayed (EXIF-oriented) pixels."""

    operation: Literal["resize", "thumbnail"]
    width: Annotated[int, msgspec.Meta(ge=1)]
    height: Annotated[int, msgspec.Meta(ge=1)]
    output_format: OutputFormat
    jpeg_quality: Annotated[int, msgspec.Meta(ge=1, le=100)] = 85
    max_pixels: Annotated[int, msgspec.Meta(ge=1)] = 50_000_000
    allowed_formats: frozenset[str] = DEFAULT_ALLOWED_FORMATS


class Result(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The output as written: its real size, format and length in bytes."""

    width: int
    height: int
    format: OutputFormat
    bytes: int


def configure_pillow(max_pixels: int) -> None:
    """Apply the worker's process-wide Pillow settings; cheap and idempotent.

    Pillow's own decompression-bomb check then rejects anything over ``max_pixels`` when it
    opens a file or a frame (its warning band becomes an error); truncated data stays an
    error. Called by :func:`process` on entry, so a worker is configured by its first job
    (again only if ``max_pixels`` changes). This mutates global state: never call it in the
    web server process.
    """
    if max_pixels != Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    bomb_is_error = any(
        action == "error" and category is Image.DecompressionBombWarning
        for action, _, category, _, _ in warnings.filters
    )
    if not bomb_is_error:
        warnings.simplefilter("error", Image.DecompressionBombWarning)


def _stored_target(spec: JobSpec, stored: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The output size in the image's stored orientation (the spec is in displayed pixels)."""
    displayed = ops.oriented_size(stored, orientation)
    wanted = (spec.width, spec.height)
    target = wanted if spec.operation == "resize" else ops.fit_size(displayed, wanted)
    return ops.oriented_size(target, orientation)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def process(spec: JobSpec, src: str, dst: str) -> Result:
    """Read the image at ``src``, apply ``spec`` and write the encoded result to ``dst``.

    Only the first frame is decoded; EXIF orientation is applied (cheaply: the stored image
    is resampled to the transposed target, then the small result is transposed). The output
    carries no EXIF/XMP, only an ICC profile matching its mode. A bad image raises
    :class:`~imaging.errors.UnsupportedFormat`, :class:`~imaging.errors.ImageTooLarge`,
    :class:`~imaging.errors.CorruptImage` or :class:`~imaging.errors.TruncatedImage`, and
    ``dst`` is then removed. A missing ``src`` or an unwritable ``dst`` raises ``OSError``.
    """
    if spec.width < 1 or spec.height < 1:
        raise ValueError(f"target size must be positive, not {spec.width}x{spec.height}")
    if spec.operation == "resize" and spec.width * spec.height > spec.max_pixels:
        raise ImageTooLarge(
            f"the requested output is {spec.width}x{spec.height} = "
            f"{spec.width * spec.height:,} pixels, over the limit of {spec.max_pixels:,} pixels"
        )
    configure_pillow(spec.max_pixels)
    try:
        return _process(spec, src, dst)
    except BaseException:
        _remove(dst)
        raise


def _process(spec: JobSpec, src: str, dst: str) -> Result:
    limit = spec.max_pixels
    with warnings.catch_warnings(), open(src, "rb") as fp:
        # Damaged metadata (corrupt EXIF, a malformed MPO index, odd TIFF tags) makes Pillow
        # warn and carry on decoding the pixels: not a reason to fail the job.
        warnings.simplefilter("ignore", UserWarning)
        with codec.open_image(fp, allowed=spec.allowed_formats, max_pixels=limit) as image:
            with translate_pillow_errors(image.format or "image", limit=limit):
                if image.format in codec.DRAFTABLE:
                    orientation = codec.read_orientation(image)  # APP1 only, before decoding
                    target = _stored_target(spec, image.size, orientation)
                    draft = ops.draft_size(target)
                    box = codec.decode_first_frame(image, max_pixels=limit, draft_size=draft)
                else:
                    box = codec.decode_first_frame(image, max_pixels=limit)
                    orientation = codec.read_orientation(image)  # PNG may keep it after IDAT
                    target = _stored_target(spec, image.size, orientation)
                icc_profile = image.info.get("icc_profile")
                working = ops.to_working_mode(image)
            resized = ops.resize(working, target, box=box)
    output = ops.orient(resized, orientation)
    if spec.output_format == "jpeg":
        output = ops.flatten(output)
    written = codec.save(
        output,
        dst,
        output_format=spec.output_format,
        jpeg_quality=spec.jpeg_quality,
        icc_profile=icc_profile if isinstance(icc_profile, bytes) else None,
    )
    return Result(
        width=output.width, height=output.height, format=spec.output_format, bytes=written
    )

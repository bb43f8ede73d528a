"""The job entry point, run in a worker process: open, decode, orient, resize, encode.

Speed, measured on the project's 2-core Debian 12 machine (pillow-simd 12.1.1.post0, one
process, JPEG q85 output, best of 5 from timeit), run from the project root with::

    /tmp/v/bin/python -m timeit -s "from imaging import JobSpec, process; s = JobSpec(
        operation='thumbnail', width=200, height=200, output_format='jpeg')"
        "process(s, '../shared/corpus/good/mate__Storm.jpg', '/tmp/out.jpg')"

and, for "full decode", the stock way to the same output size::

    /tmp/v/bin/python -m timeit -s "from PIL import Image" "Image.open(SRC).resize(
        SIZE, Image.Resampling.LANCZOS).save('/tmp/ref.jpg', quality=85)"

==================================  ===============  =============  ===========
input (corpus ``good/``)            job              process()      full decode
==================================  ===============  =============  ===========
mate__Storm.jpg 1920x1280           thumbnail 200    83 images/s    45 images/s
mate__Storm.jpg                     resize 800x600   40 images/s    37 images/s
plasma__Path__2560x1600.jpg         thumbnail 200    70 images/s    33 images/s
plasma__Path__2560x1600.jpg         resize 800x600   27 images/s    26 images/s
mate__Elephants.jpg (progressive)   thumbnail 200    17 images/s    14 images/s
mate__Elephants_5640x3172.jpg       thumbnail 200    1.7 images/s   1.3 images/s
plasma__Patak__5120x2880.png        thumbnail 200    1.7 images/s   (PNG inflate)
mate__Gulp.png RGBA 1920x1200       resize 300x200   16 images/s
4000x3000 baseline JPEG [1]_        thumbnail 800x600 15 images/s   8.0 images/s
4000x3000 baseline JPEG [1]_        thumbnail 200    21 images/s    7.2 images/s
==================================  ===============  =============  ===========

.. [1] The DESIGN.md case, not in the corpus: Elephants_5640x3172.jpg resized to 4000x3000
   and saved baseline at quality 90 (``/tmp/sweep/photo4000.jpg`` when measured).

Progressive JPEGs gain little from ``draft()`` (every scan is still decoded); a resize that
shrinks one axis less than 2 x 1.25 gets no DCT scaling at all (both axes must allow it).

Quality: PSNR of ``process`` (PNG output) against full decode + stock LANCZOS, as checked by
``tests/test_imaging_process.py``: Elephants.jpg resize 200x200 47.6 dB, Path resize 800x600
identical, Elephants_5640x3172 thumbnail 200 48.7 dB, Gulp.png resize 300x200 56.2 dB
(premultiplied), xmp_test.jpg thumbnail 200 50.6 dB, Grey thumbnail 200 40.4 dB, Patak
resize 800x600 56.0 dB.

How ``ops.DRAFT_GAP`` and ``ops.REDUCING_GAP`` were chosen: after a JPEG draft, LANCZOS
shrinks the rest of the way by a factor between DRAFT_GAP and 2 x DRAFT_GAP. The worst PSNR
over five corpus-sized JPEGs by that factor was 35.2 dB at 1.0, 36.8 at 1.25, 39.8 at 1.5,
42.8 at 2.0. DRAFT_GAP = 1.0 (what ``draft(None, target)`` gives) would make the 4000x3000 ->
800x600 case 20 images/s instead of 15, but at 35-37 dB: no margin. 1.25 keeps 36.8 dB
worst case (37.0 dB for that 4000x3000 case) and lets a 2560x1600 -> 800x600 resize decode
at half scale (1.5 did not: 800 < 1.5 x 600), 5.0 -> 5.8 images/s with PNG output, 43 dB.
For images without DCT scaling, REDUCING_GAP = 2.0
resamples Patak 5120x2880 RGBA -> 800x450 in 18.5 ms (55.0 dB) against 33 ms without
reduction and 29.8 ms (56.9 dB) at 3.0; Path RGB -> 200x125 in 2.0 ms (48.6 dB) against 8.9 ms.
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
from imaging.memory import configure_memory

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
    error; freed image memory is kept for reuse (:mod:`imaging.memory`). Called by
    :func:`process` on entry, so a worker is configured by its first job (again only if
    ``max_pixels`` changes). This mutates global state: never call it in the web server
    process.
    """
    if max_pixels != Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    configure_memory()
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
    ``dst`` is then removed. A missing ``src`` or an unwritable ``dst`` raises ``OSError``;
    running out of memory raises ``MemoryError``. Meant for single-threaded worker
    processes: it configures Pillow for the whole process and scopes warning filters with
    ``warnings.catch_warnings``, which is not thread-safe.
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

"""The job entry point, run in a worker process: open, decode once, run the steps, encode.

The leading geometry of the chain is folded into decoding (:mod:`imaging.fold`): JPEG draft
scale, one resampling of the region kept, the transpose on the small result. The figures
below are for the seed's two operations, which are one resize step each.

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
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Annotated, Any, Literal

import msgspec
from PIL import Image, ImageFile

from imaging import animation, codec, geometry, ops, steps
from imaging.codec import DEFAULT_ALLOWED_FORMATS, OutputFormat
from imaging.document import Output, Step, seed_steps
from imaging.encode import blurhash_of, encode
from imaging.errors import ImagingError, translate_pillow_errors
from imaging.fold import Fold, fold
from imaging.memory import configure_memory

__all__ = ["JobSpec", "Rendition", "Result", "configure_pillow", "process", "process_variants"]


class Rendition(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One output of a job: steps in order (sizes in displayed, EXIF-oriented pixels), then
    the encoding."""

    steps: list[Step]
    output_format: OutputFormat
    output: Output = msgspec.field(default_factory=Output)


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to do with one image: its outputs by name, all made from one decode, under the
    deployment's limits."""

    variants: dict[str, Rendition]
    jpeg_quality: Annotated[int, msgspec.Meta(ge=1, le=100)] = 85
    max_pixels: Annotated[int, msgspec.Meta(ge=1)] = 50_000_000
    max_output_pixels: Annotated[int, msgspec.Meta(ge=1)] = 40_000_000
    allowed_formats: frozenset[str] = DEFAULT_ALLOWED_FORMATS
    watermark_path: str | None = None
    max_frames: Annotated[int, msgspec.Meta(ge=1)] = 100

    @classmethod
    def single(
        cls,
        steps: list[Step],
        output_format: OutputFormat,
        *,
        output: Output | None = None,
        **limits: Any,
    ) -> JobSpec:
        """A job with one output, named ``default``."""
        rendition = Rendition(steps=steps, output_format=output_format, output=output or Output())
        return cls(variants={"default": rendition}, **limits)

    @classmethod
    def seed(
        cls,
        operation: Literal["resize", "thumbnail"],
        width: int,
        height: int,
        output_format: OutputFormat,
        **limits: Any,
    ) -> JobSpec:
        """The seed service's job: an exact size (``resize``) or a fit inside (``thumbnail``)."""
        return cls.single(seed_steps(operation, width, height), output_format, **limits)


class Result(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """The output as written: its real size, format, length in bytes and, if asked, BlurHash."""

    width: int
    height: int
    format: OutputFormat
    bytes: int
    blurhash: str | None = None


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


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def process(spec: JobSpec, src: str, dst: str) -> Result:
    """Read the image at ``src``, apply ``spec`` (one output) and write it to ``dst``.

    Only the first frame is decoded, once; EXIF orientation is applied (cheaply: the stored
    image is resampled, then the small result is transposed). The output carries no
    EXIF/XMP, only an ICC profile matching its mode. A bad image raises
    :class:`~imaging.errors.UnsupportedFormat`, :class:`~imaging.errors.ImageTooLarge`,
    :class:`~imaging.errors.CorruptImage` or :class:`~imaging.errors.TruncatedImage`; steps
    that do not fit the image raise :class:`~imaging.geometry.GeometryError`; ``dst`` is
    then removed. A missing ``src`` or an unwritable ``dst`` raises ``OSError``; running out
    of memory raises ``MemoryError``. Meant for single-threaded worker processes: it
    configures Pillow for the whole process and scopes warning filters with
    ``warnings.catch_warnings``, which is not thread-safe.
    """
    (name,) = spec.variants
    return process_variants(spec, src, {name: dst})[name]


def process_variants(spec: JobSpec, src: str, dsts: Mapping[str, str]) -> dict[str, Result]:
    """:func:`process` for every variant of ``spec``, each written to ``dsts[name]``, all
    from one decode (at the largest scale any of them needs). If any fails, none is left
    written, and with several variants the error's message names the one that failed."""
    configure_pillow(spec.max_pixels)
    try:
        return _process(spec, src, dsts)
    except BaseException:
        for dst in dsts.values():
            _remove(dst)
        raise


def _folds(spec: JobSpec, stored: tuple[int, int], exif_orientation: int) -> dict[str, Fold]:
    """Check each chain against the image's size (as at submit), then fold it."""
    orientation = geometry.Orientation.from_exif(exif_orientation)
    folds = {}
    for name, rendition in spec.variants.items():
        with _naming(spec, name):
            geometry.plan(
                rendition.steps,
                orientation.displayed(stored),
                max_pixels=spec.max_output_pixels,
                watermark=spec.watermark_path is not None,
            )
        folds[name] = fold(rendition.steps, stored, orientation)
    return folds


def _draft_size(folds: Iterable[Fold], stored: tuple[int, int]) -> tuple[int, int] | None:
    """The decoded size every chain can start from: the largest they need."""
    sizes = [chain.draft_size(stored) for chain in folds]
    if any(size is None for size in sizes):
        return None
    return (max(s[0] for s in sizes if s), max(s[1] for s in sizes if s))


@contextlib.contextmanager
def _naming(spec: JobSpec, name: str) -> Iterator[None]:
    """With several variants, an imaging error names the variant it happened in."""
    try:
        yield
    except ImagingError as exc:
        if len(spec.variants) == 1:
            raise
        raise type(exc)(f"variant {name!r}: {exc.message}") from exc


def _decoded(
    working: Image.Image, chain: Fold, stored: tuple[int, int], box: geometry.Box
) -> Image.Image:
    """The folded part of the chain on the decoded image (``box``: the whole stored image
    in decoded pixels, smaller after a JPEG draft)."""
    sx, sy = (box[2] - box[0]) / stored[0], (box[3] - box[1]) / stored[1]
    x0, y0, x1, y1 = chain.region
    region = (box[0] + x0 * sx, box[1] + y0 * sy, box[0] + x1 * sx, box[1] + y1 * sy)
    target = chain.stored_target()
    if target is not None:
        image = ops.resize(working, target, box=region)
    elif region == (0, 0, working.width, working.height):
        image = working.copy()
    else:
        image = working.crop((round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)))
    return ops.orient_by(image, chain.orientation.transpose)


def _process(spec: JobSpec, src: str, dsts: Mapping[str, str]) -> dict[str, Result]:
    limit = spec.max_pixels
    with warnings.catch_warnings(), open(src, "rb") as fp:
        # Damaged metadata (corrupt EXIF, a malformed MPO index, odd TIFF tags) makes Pillow
        # warn and carry on decoding the pixels: not a reason to fail the job.
        warnings.simplefilter("ignore", UserWarning)
        with codec.open_image(fp, allowed=spec.allowed_formats, max_pixels=limit) as image:
            stored = image.size
            with translate_pillow_errors(image.format or "image", limit=limit):
                if image.format in codec.DRAFTABLE:
                    folds = _folds(spec, stored, codec.read_orientation(image))  # APP1 only
                    draft = _draft_size(folds.values(), stored)
                    box = codec.decode_first_frame(image, max_pixels=limit, draft_size=draft)
                else:
                    box = codec.decode_first_frame(image, max_pixels=limit)
                    # PNG may keep its orientation after the pixel data.
                    folds = _folds(spec, stored, codec.read_orientation(image))
                icc_profile = image.info.get("icc_profile")
                working = ops.to_working_mode(image)
            profile = icc_profile if isinstance(icc_profile, bytes) else None
            moving = {
                name: rendition
                for name, rendition in spec.variants.items()
                if rendition.output.animated and animation.is_animated(image)
            }
            results = {}
            for name, rendition in spec.variants.items():
                if name in moving:
                    continue
                with _naming(spec, name):
                    decoded = _decoded(working, folds[name], stored, box)
                    output = _run(spec, rendition, folds[name], decoded)
                    results[name] = _encode(spec, rendition, output, dsts[name], profile)
            if moving:
                results.update(_animate(spec, image, moving, dsts))
    return {name: results[name] for name in spec.variants}


def _animate(
    spec: JobSpec,
    image: ImageFile.ImageFile,
    renditions: dict[str, Rendition],
    dsts: Mapping[str, str],
) -> dict[str, Result]:
    """Every frame through each animated variant's steps, then the animations written."""
    loop = image.info.get("loop")
    frames: dict[str, list[Image.Image]] = {name: [] for name in renditions}
    durations = []
    for frame, duration in animation.frames_of(
        image, max_frames=spec.max_frames, max_pixels=spec.max_pixels
    ):
        durations.append(duration)
        for name, rendition in renditions.items():
            with _naming(spec, name):
                output = frame
                for step in rendition.steps:
                    output = _apply(spec, rendition, step, output)
                frames[name].append(output)
    results = {}
    for name, rendition in renditions.items():
        with _naming(spec, name):
            encoded = animation.encode_frames(
                frames[name],
                dsts[name],
                durations=durations,
                loop=loop if isinstance(loop, int) else None,
                output=rendition.output,
                output_format=rendition.output_format,
                blurhash=partial(blurhash_of, output=rendition.output)
                if rendition.output.blurhash
                else None,
            )
        results[name] = Result(
            width=encoded.width,
            height=encoded.height,
            format=encoded.format,
            bytes=encoded.bytes,
            blurhash=encoded.blurhash,
        )
    return results


def _run(spec: JobSpec, rendition: Rendition, chain: Fold, image: Image.Image) -> Image.Image:
    """The steps left after decoding; an error names the step as the plan does."""
    for step in chain.deferred:
        image = _apply(spec, rendition, step, image)
    if chain.resize is not None:
        image = steps.finish_resize(image, *chain.resize)
    for step in chain.rest:
        image = _apply(spec, rendition, step, image)
    return image


def _apply(spec: JobSpec, rendition: Rendition, step: Step, image: Image.Image) -> Image.Image:
    try:
        return steps.apply(image, step, watermark_path=spec.watermark_path)
    except geometry.GeometryError as exc:
        index = next(i for i, mine in enumerate(rendition.steps) if mine is step)
        where = f"steps[{index}] ({type(step).__name__.lower()})"
        raise type(exc)(f"{where}: {exc.message}") from exc


def _encode(
    spec: JobSpec, rendition: Rendition, image: Image.Image, dst: str, icc_profile: bytes | None
) -> Result:
    encoded = encode(
        image,
        dst,
        output=rendition.output,
        output_format=rendition.output_format,
        default_jpeg_quality=spec.jpeg_quality,
        icc_profile=icc_profile,
    )
    return Result(
        width=encoded.width,
        height=encoded.height,
        format=encoded.format,
        bytes=encoded.bytes,
        blurhash=encoded.blurhash,
    )

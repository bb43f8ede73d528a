"""Encoding one image as a job's output: the format, its options, the size cap, the BlurHash."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

import blurhash  # type: ignore[import-untyped]
import msgspec
from PIL import Image, ImageCms, features

from imaging import codec, ops
from imaging.codec import OutputFormat
from imaging.document import Output
from imaging.errors import ImagingError
from imaging.steps import parse_color

__all__ = [
    "BLURHASH_COMPONENTS",
    "DEFAULT_QUALITY",
    "MAX_SIDE",
    "Encoded",
    "MaxBytesUnreachable",
    "blurhash_of",
    "encode",
    "output_problem",
    "resolve_format",
]

#: The quality of a lossy output that names none (jpeg's is the deployment's JPEG_QUALITY).
DEFAULT_QUALITY: Final = {"webp": 80, "avif": 60}
#: The widest or tallest image each encoder can write.
MAX_SIDE: Final = {"jpeg": 65_500, "png": 2**31 - 1, "webp": 16_383, "avif": 65_535, "gif": 65_535}
#: BlurHash components across and down, and the longest side of the copy it is taken from.
BLURHASH_COMPONENTS: Final = (4, 3)
BLURHASH_WIDTH: Final = 32

_PILLOW_FORMAT: Final = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "avif": "AVIF",
    "gif": "GIF",
}
_LOSSY: Final = frozenset({"jpeg", "webp", "avif"})
_PALETTE: Final = frozenset({"png", "gif"})
# Modes the encoders write as they are; the others are converted first, so that the ICC
# profile is checked against what is really written (WebP has no grey, AVIF no grey+alpha).
_WRITTEN_MODE: Final = {"webp": {"L": "RGB", "LA": "RGBA"}, "avif": {"LA": "RGBA"}}
# A pixel at least this opaque is opaque in a GIF (which has one transparent index).
_GIF_OPAQUE: Final = 128
# AVIF encoder speed (0 slowest, best .. 10 fastest). Measured on a 1200x750 photo at q60:
# speed 6 (the plugin's default) 1370 ms, 8 366 ms for 0.4 dB less at about the same size.
_AVIF_SPEED: Final = 8


class Encoded(msgspec.Struct, frozen=True, kw_only=True):
    """An output as written: its format, size, length in bytes and, if asked, BlurHash."""

    format: OutputFormat
    width: int
    height: int
    bytes: int
    blurhash: str | None = None


class MaxBytesUnreachable(ImagingError):
    """Even the lowest quality (or the fewest colours) encodes to more than ``max_bytes``."""

    code: ClassVar[str] = "max_bytes_unreachable"
    default_message: ClassVar[str] = "the output cannot be made as small as max_bytes"


def resolve_format(output: Output, default: OutputFormat) -> OutputFormat:
    """The format ``output`` names (``jpg`` is ``jpeg``), else ``default`` (the source's
    default output, :attr:`imaging.codec.ImageInfo.default_output`)."""
    if output.format is None:
        return default
    return "jpeg" if output.format == "jpg" else output.format


def output_problem(output: Output, output_format: OutputFormat) -> str | None:
    """A sentence naming the field when ``output``'s options do not fit ``output_format``
    (e.g. ``lossless`` with jpeg); None if they all do. Check at submit: :func:`encode`
    raises ``ValueError`` with this sentence."""
    if output.lossless and output_format not in ("webp", "avif"):
        return f"`lossless` applies to webp and avif only, not {output_format}"
    if output.colors is not None and output_format not in _PALETTE:
        return f"`colors` applies to png and gif only, not {output_format}"
    if output.progressive and output_format != "jpeg":
        return f"`progressive` applies to jpeg only, not {output_format}"
    # A quality for whatever format the upload decides is fine: it is not used for png/gif.
    if output.quality is not None and output.format is not None and output_format not in _LOSSY:
        return (
            f"`quality` applies to jpeg, webp and avif only, not {output_format}"
            " (`colors` makes a png or gif smaller)"
        )
    if output.quality is not None and output.lossless:
        return "`quality` does not apply to a lossless output"
    return None


def encode(
    image: Image.Image,
    dst: str,
    *,
    output: Output,
    output_format: OutputFormat,
    default_jpeg_quality: int,
    icc_profile: bytes | None,
) -> Encoded:
    """Encode ``image`` (L, LA, RGB or RGBA) as ``output`` says to the file ``dst``.

    ``output_format`` is the resolved format (:func:`resolve_format`); ``icc_profile`` is
    the source's. jpeg is flattened onto ``output.background``; png, webp and avif keep
    alpha; gif keeps it as one transparent index (pixels at least half opaque are flattened
    onto the background, the others become transparent). Only the pixels and an ICC profile
    that fits the written mode are written (gif: never a profile): ``image.info`` (EXIF, XMP,
    comments, which some encoders pick up) is cleared. With ``max_bytes`` the quality (png,
    gif: the number of colours) is searched for the best that fits, in memory, before
    anything is written; :class:`MaxBytesUnreachable` if none does. With the defaults, jpeg
    and png are byte for byte what the seed service wrote. If writing fails, removing the
    partial file is the caller's job.
    """
    problem = output_problem(output, output_format)
    if problem is not None:
        raise ValueError(problem)
    if output_format == "avif":
        codec.register_plugins()
    background = _background_of(output)
    profile = icc_profile or None
    if output.icc == "srgb":
        image, profile = _to_srgb(image, profile), None
    if output_format == "jpeg":
        image = ops.flatten(image, background)
    elif image.mode in _WRITTEN_MODE.get(output_format, {}):
        image = image.convert(_WRITTEN_MODE[output_format][image.mode])
    image.info.clear()

    levels, attempt = _levels(image, output, output_format, default_jpeg_quality, profile)
    # Encoded in memory first: with max_bytes, only the chosen attempt reaches dst.
    if output.max_bytes is None:
        data = attempt(levels[0])
    else:
        data = _best_fitting(levels, attempt, output.max_bytes, output_format)
    with open(dst, "wb") as fp:
        fp.write(data)
    return Encoded(
        format=output_format,
        width=image.width,
        height=image.height,
        bytes=len(data),
        blurhash=_blurhash(image, background) if output.blurhash else None,
    )


# A level is what max_bytes may lower: a quality (lossy formats) or a number of colours
# (png, gif), or None for png's own full-colour encoding. Levels go from best to smallest.
Level = int | None


def _levels(
    image: Image.Image,
    output: Output,
    output_format: OutputFormat,
    default_jpeg_quality: int,
    profile: bytes | None,
) -> tuple[Sequence[Level], Callable[[Level], bytes]]:
    """The levels :func:`encode` may use, best first, and how to encode at one of them."""
    pillow_format = _PILLOW_FORMAT[output_format]
    if output_format in _PALETTE:
        colors = output.colors or 256

        def paletted(level: Level) -> bytes:
            if level is None:
                return _save(image, pillow_format, profile)
            if output_format == "gif":
                return _save_gif(image, level, _background_of(output))
            return _save_png_palette(image, level, profile)

        if output_format == "gif" or output.colors is not None:
            return range(colors, 1, -1), paletted
        return [None, *range(colors, 1, -1)], paletted

    params: dict[str, Any] = {}
    if output_format == "jpeg" and output.progressive:
        params["progressive"] = True
    elif output_format == "webp" and output.lossless:
        params["lossless"] = True
    elif output_format == "avif":
        params.update(speed=_AVIF_SPEED, max_threads=1)
        if output.lossless:
            # pillow-avif-plugin has no lossless switch; this is as close as it gets.
            params.update(quality=100, subsampling="4:4:4")

    def lossy(level: Level) -> bytes:
        quality = {} if level is None else {"quality": level}
        return _save(image, pillow_format, profile, **params, **quality)

    if output.lossless:
        return [None], lossy
    top = output.quality or DEFAULT_QUALITY.get(output_format, default_jpeg_quality)
    return range(top, 0, -1), lossy


def blurhash_of(image: Image.Image, output: Output) -> str:
    """The BlurHash of ``image`` as ``output`` would show it (alpha over its background)."""
    return _blurhash(image, _background_of(output))


def _background_of(output: Output) -> tuple[int, int, int]:
    red, green, blue, _ = parse_color(output.background)
    return (red, green, blue)


def _best_fitting(
    levels: Sequence[Level], attempt: Callable[[Level], bytes], limit: int, output_format: str
) -> bytes:
    """The encoding at the best level that fits in ``limit`` bytes, by binary search (sizes
    shrink with the level, near enough): the best level, the smallest, then ~log2(levels)."""
    best = attempt(levels[0])
    if len(best) <= limit:
        return best
    smallest = attempt(levels[-1]) if len(levels) > 1 else best
    if len(smallest) > limit:
        lowest = _describe(levels[-1], output_format)
        raise MaxBytesUnreachable(
            f"the output cannot be made to fit max_bytes = {limit:,} bytes: the smallest"
            f" {output_format} encoding is {len(smallest):,} bytes ({lowest})"
        )
    too_big, fits, chosen = 0, len(levels) - 1, smallest
    while fits - too_big > 1:
        middle = (too_big + fits) // 2
        data = attempt(levels[middle])
        if len(data) <= limit:
            fits, chosen = middle, data
        else:
            too_big = middle
    return chosen


def _describe(level: Level, output_format: str) -> str:
    if level is None:
        return "lossless"
    return f"{level} colours" if output_format in _PALETTE else f"quality {level}"


def _save(image: Image.Image, pillow_format: str, profile: bytes | None, **params: Any) -> bytes:
    """``image`` encoded, with ``profile`` if it fits the written mode (a palette's is RGB)."""
    if profile is not None and codec.icc_fits(profile, "RGB" if image.mode == "P" else image.mode):
        params["icc_profile"] = profile
    image.info.clear()
    out = io.BytesIO()
    image.save(out, format=pillow_format, **params)
    return out.getvalue()


def _quantize_method() -> Image.Quantize:
    # libimagequant (pngquant's library) is in the Makefile's build; the fallback keeps a
    # Pillow built without it working, with coarser palettes.
    if features.check_feature("libimagequant"):
        return Image.Quantize.LIBIMAGEQUANT
    return Image.Quantize.FASTOCTREE


def _quantize(image: Image.Image, colors: int) -> Image.Image:
    """``image`` as a palette of at most ``colors`` colours (with alpha, an RGBA palette)."""
    source = image.convert("RGBA" if "A" in image.mode else "RGB")
    # libimagequant makes at least two colours; one (a gif's, beside its transparent index)
    # is median cut's.
    method = _quantize_method() if colors >= 2 else Image.Quantize.MEDIANCUT
    return source.quantize(colors=colors, method=method)


def _save_png_palette(image: Image.Image, colors: int, profile: bytes | None) -> bytes:
    """``image`` as a PNG of at most ``colors`` colours, alpha kept in its tRNS chunk."""
    paletted = _quantize(image, colors)
    if paletted.palette is None or paletted.palette.mode != "RGBA":
        return _save(paletted, "PNG", profile)
    # Pillow's PNG writer counts an RGBA palette's entries as if they were RGB (4/3 too
    # many, and never a 4-bit PNG): hand it an RGB palette and the alphas apart.
    entries = paletted.getpalette("RGBA") or []
    rgb = [value for index, value in enumerate(entries) if index % 4 != 3]
    paletted.putpalette(rgb, "RGB")
    return _save(paletted, "PNG", profile, transparency=bytes(entries[3::4]))


def _save_gif(image: Image.Image, colors: int, background: tuple[int, int, int]) -> bytes:
    """``image`` as a GIF of at most ``colors`` colours, one of them transparent if any
    pixel is less than half opaque."""
    if "A" not in image.mode:
        return _save(_quantize(image, colors), "GIF", None)
    rgba = image.convert("RGBA")
    clear = rgba.getchannel("A").point(lambda alpha: 255 if alpha < _GIF_OPAQUE else 0)
    if clear.getbbox() is None:  # no transparent pixel: every index is a colour
        return _save(_quantize(ops.flatten(rgba, background), colors), "GIF", None)
    paletted = _quantize(ops.flatten(rgba, background), colors - 1)
    palette = paletted.getpalette() or []
    index = len(palette) // 3
    paletted.putpalette([*palette, *background])
    paletted.paste(index, mask=clear)
    return _save(paletted, "GIF", None, transparency=index)


def _to_srgb(image: Image.Image, profile: bytes | None) -> Image.Image:
    """``image`` converted from ``profile`` to sRGB; as it is without a profile that fits.

    A profile LittleCMS cannot read is metadata damage (like broken EXIF), not a reason to
    fail: the pixels are then taken as sRGB already.
    """
    if profile is None or not codec.icc_fits(profile, image.mode):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        # Relative colorimetric, as libvips (sharp) converts by default.
        intent = ImageCms.Intent.RELATIVE_COLORIMETRIC
        if image.mode in ("L", "LA"):
            # Grey has no sRGB profile at hand: through RGB and back (neutral stays neutral).
            grey = image.getchannel("L")
            rgb = ImageCms.profileToProfile(grey, source, srgb, intent, outputMode="RGB")
            if rgb is None:
                return image
            converted = rgb.convert("L")
            if image.mode == "LA":
                converted.putalpha(image.getchannel("A"))
            return converted
        result = ImageCms.profileToProfile(image, source, srgb, intent, outputMode=image.mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    return image if result is None else result


def _blurhash(image: Image.Image, background: tuple[int, int, int]) -> str:
    """The BlurHash of ``image`` flattened onto ``background``, from a copy at most
    :data:`BLURHASH_WIDTH` pixels on a side (the hash keeps only the coarsest detail)."""
    tiny = ops.thumbnail(image, (BLURHASH_WIDTH, BLURHASH_WIDTH))
    rgb = ops.flatten(tiny, background).convert("RGB")
    data = rgb.tobytes()
    pixels = list(zip(data[0::3], data[1::3], data[2::3], strict=True))
    rows = [pixels[y * rgb.width : (y + 1) * rgb.width] for y in range(rgb.height)]
    across, down = BLURHASH_COMPONENTS
    value: str = blurhash.encode(rows, components_x=across, components_y=down)
    return value

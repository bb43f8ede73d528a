"""imaging.encode: every output format and option, decoded back; AVIF and HEIF inputs."""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import blurhash  # type: ignore[import-untyped]
import msgspec
import pytest
from PIL import Image, ImageChops, ImageCms, ImageStat

from imaging import codec, ops
from imaging.codec import OutputFormat
from imaging.document import Output
from imaging.encode import Encoded, MaxBytesUnreachable, encode, output_problem, resolve_format
from imaging.errors import ImageTooLarge, UnsupportedFormat
from tests.conftest import GOOD, ROOT

FORMATS: list[OutputFormat] = ["jpeg", "png", "webp", "avif", "gif"]
LIMIT = 50_000_000
SIZE = (96, 96)


def _source(name: str, size: tuple[int, int] = SIZE) -> Image.Image:
    """A small working-mode copy of a corpus image, its ``info`` (EXIF, XMP, ICC) kept."""
    with Image.open(GOOD / name) as image:
        image.load()
        small = ops.to_working_mode(ops.thumbnail(image, size))
        small.info = dict(image.info)
        return small


@pytest.fixture(scope="module")
def rgb() -> Image.Image:
    return _source("mate__Storm.jpg")


@pytest.fixture(scope="module")
def rgba() -> Image.Image:
    return _source("mate__Gulp.png")


def _encode(
    image: Image.Image,
    tmp_path: Path,
    output_format: OutputFormat,
    output: Output | None = None,
    icc_profile: bytes | None = None,
) -> tuple[Encoded, Path]:
    dst = tmp_path / f"out.{output_format}"
    encoded = encode(
        image.copy(),
        str(dst),
        output=output or Output(),
        output_format=output_format,
        default_jpeg_quality=85,
        icc_profile=icc_profile,
    )
    assert encoded.bytes == dst.stat().st_size
    return encoded, dst


def _decoded(path: Path) -> Image.Image:
    codec.register_plugins()
    with Image.open(path) as image:
        image.load()
        return image


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    mode = "RGBA" if "A" in a.mode or "A" in b.mode else "RGB"
    difference = ImageChops.difference(a.convert(mode), b.convert(mode))
    return max(ImageStat.Stat(difference).mean)


# --- formats and modes --------------------------------------------------------------------

# What each source mode is written as: alpha kept except by jpeg (flattened) and gif (one
# transparent index in a palette); WebP has no grey.
WRITTEN_MODES = {
    ("jpeg", "RGB"): "RGB",
    ("jpeg", "RGBA"): "RGB",
    ("jpeg", "L"): "L",
    ("jpeg", "LA"): "L",
    ("png", "RGB"): "RGB",
    ("png", "RGBA"): "RGBA",
    ("png", "L"): "L",
    ("png", "LA"): "LA",
    ("webp", "RGB"): "RGB",
    ("webp", "RGBA"): "RGBA",
    ("webp", "L"): "RGB",
    ("webp", "LA"): "RGBA",
    ("avif", "RGB"): "RGB",
    ("avif", "RGBA"): "RGBA",
    ("avif", "L"): "L",
    ("avif", "LA"): "RGBA",
    ("gif", "RGB"): "P",
    ("gif", "RGBA"): "P",
    ("gif", "L"): "P",
    ("gif", "LA"): "P",
}


@pytest.mark.parametrize(("output_format", "mode"), list(WRITTEN_MODES))
def test_every_format_decodes_back(
    output_format: OutputFormat, mode: str, rgba: Image.Image, tmp_path: Path
) -> None:
    source = rgba.convert(mode)
    encoded, dst = _encode(source, tmp_path, output_format)
    assert (encoded.format, encoded.width, encoded.height) == (output_format, *source.size)
    image = _decoded(dst)
    assert image.format == output_format.upper()
    assert image.size == source.size
    assert image.mode == WRITTEN_MODES[output_format, mode]
    if output_format == "gif":
        assert (image.info.get("transparency") is not None) == ("A" in mode)
    # Lossy, but the same picture (flattened where alpha is lost).
    reference = source if image.mode in ("RGBA", "LA") else ops.flatten(source)
    assert _mean_difference(image, reference) < 12


def test_jpeg_is_flattened_onto_the_background(rgba: Image.Image, tmp_path: Path) -> None:
    source = rgba.copy()
    source.paste((0, 0, 0, 0), (0, 0, 16, 16))  # a fully transparent corner
    output = Output(background="#2060c0")
    _, dst = _encode(source, tmp_path, "jpeg", output)
    pixel = _decoded(dst).getpixel((4, 4))
    assert isinstance(pixel, tuple)
    assert all(abs(got - want) <= 6 for got, want in zip(pixel, (0x20, 0x60, 0xC0), strict=True))


def test_gif_transparency_is_one_index(rgba: Image.Image, tmp_path: Path) -> None:
    source = rgba.copy()
    source.paste((0, 0, 0, 0), (0, 0, 16, 16))
    source.paste((200, 30, 30, 255), (40, 40, 56, 56))
    _, dst = _encode(source, tmp_path, "gif")
    image = _decoded(dst)
    assert image.getpixel((4, 4)) == image.info["transparency"]
    assert image.convert("RGBA").getpixel((48, 48)) == (200, 30, 30, 255)


def test_no_metadata_is_written(tmp_path: Path) -> None:
    source = _source("pillow__xmp_test.jpg")
    assert {"exif", "xmp"} <= set(source.info)
    for output_format in FORMATS:
        _, dst = _encode(source, tmp_path, output_format)
        image = _decoded(dst)
        keys = [str(key).lower() for key in image.info]
        written = [key for key in keys if "exif" in key or "xmp" in key]
        assert not written, (output_format, written)
        assert not image.getexif(), output_format


# --- options ------------------------------------------------------------------------------


def test_progressive_jpeg(rgb: Image.Image, tmp_path: Path) -> None:
    _, baseline = _encode(rgb, tmp_path, "jpeg")
    assert not _decoded(baseline).info.get("progressive")
    _, progressive = _encode(rgb, tmp_path, "jpeg", Output(progressive=True))
    assert _decoded(progressive).info.get("progressive")


def test_lossless_webp_keeps_every_pixel(rgb: Image.Image, tmp_path: Path) -> None:
    _, dst = _encode(rgb, tmp_path, "webp", Output(lossless=True))
    assert ImageChops.difference(_decoded(dst), rgb).getbbox() is None


def test_lossless_avif_is_within_two_levels(rgb: Image.Image, tmp_path: Path) -> None:
    # pillow-avif-plugin cannot ask for an identity matrix: RGB -> YUV 4:4:4 rounds.
    _, dst = _encode(rgb, tmp_path, "avif", Output(lossless=True))
    difference = ImageChops.difference(_decoded(dst), rgb)
    assert max(ImageStat.Stat(difference).extrema[band][1] for band in range(3)) <= 2


@pytest.mark.parametrize("output_format", ["png", "gif"])
@pytest.mark.parametrize("colors", [2, 5, 16, 64])
def test_colors_bound_the_palette(
    output_format: OutputFormat, colors: int, rgba: Image.Image, tmp_path: Path
) -> None:
    _, dst = _encode(rgba, tmp_path, output_format, Output(colors=colors))
    image = _decoded(dst)
    assert image.mode == "P"
    used = image.getcolors(256)
    assert used is not None
    assert len(used) <= colors


@pytest.mark.parametrize("output_format", ["jpeg", "webp", "avif"])
def test_quality_changes_the_size(
    output_format: OutputFormat, rgb: Image.Image, tmp_path: Path
) -> None:
    sizes = [
        _encode(rgb, tmp_path, output_format, Output(quality=quality))[0].bytes
        for quality in (10, 50, 95)
    ]
    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[-1] / 2


@pytest.mark.parametrize("output_format", FORMATS)
def test_max_bytes_is_met(output_format: OutputFormat, rgb: Image.Image, tmp_path: Path) -> None:
    full = _encode(rgb, tmp_path, output_format)[0].bytes
    limit = full * 2 // 3
    encoded, dst = _encode(rgb, tmp_path, output_format, Output(max_bytes=limit))
    assert encoded.bytes <= limit
    assert encoded.bytes > limit // 4  # the best that fits, not the smallest
    assert _decoded(dst).size == rgb.size


def test_max_bytes_that_fits_changes_nothing(rgb: Image.Image, tmp_path: Path) -> None:
    full = _encode(rgb, tmp_path, "jpeg")[1].read_bytes()
    _, dst = _encode(rgb, tmp_path, "jpeg", Output(max_bytes=len(full)))
    assert dst.read_bytes() == full


@pytest.mark.parametrize("output_format", FORMATS)
def test_max_bytes_unreachable(
    output_format: OutputFormat, rgb: Image.Image, tmp_path: Path
) -> None:
    with pytest.raises(MaxBytesUnreachable) as caught:
        _encode(rgb, tmp_path, output_format, Output(max_bytes=50))
    assert caught.value.code == "max_bytes_unreachable"
    assert "max_bytes = 50 bytes" in caught.value.message
    assert "the smallest" in caught.value.message
    assert not (tmp_path / f"out.{output_format}").exists()
    again = pickle.loads(pickle.dumps(caught.value))  # errors cross the process boundary
    assert (type(again), again.message) == (MaxBytesUnreachable, caught.value.message)


def test_max_bytes_of_a_lossless_output_is_one_try(rgb: Image.Image, tmp_path: Path) -> None:
    with pytest.raises(MaxBytesUnreachable, match="lossless"):
        _encode(rgb, tmp_path, "webp", Output(lossless=True, max_bytes=1000))


# --- ICC profiles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["pillow__xmp_test.jpg", "plasma__Path__2560x1600.jpg", "skimage__astronaut.png"]
)
@pytest.mark.parametrize("output_format", ["jpeg", "png", "webp", "avif"])
def test_icc_keep_writes_the_source_profile(
    name: str, output_format: OutputFormat, tmp_path: Path
) -> None:
    source = _source(name)
    profile = source.info["icc_profile"]
    _, dst = _encode(source, tmp_path, output_format, icc_profile=profile)
    assert _decoded(dst).info.get("icc_profile") == profile


def test_icc_keep_never_writes_a_profile_that_does_not_fit(
    rgb: Image.Image, tmp_path: Path
) -> None:
    grey_profile = bytes(16) + b"GRAY" + bytes(108)
    _, dst = _encode(rgb, tmp_path, "png", icc_profile=grey_profile)
    assert "icc_profile" not in _decoded(dst).info
    _, dst = _encode(
        rgb, tmp_path, "gif", icc_profile=_source("skimage__astronaut.png").info["icc_profile"]
    )
    assert not _decoded(dst).info.get("icc_profile")


@pytest.mark.parametrize("output_format", ["jpeg", "png", "webp", "avif"])
def test_icc_srgb_converts_and_drops_the_profile(
    output_format: OutputFormat, tmp_path: Path
) -> None:
    # Saturated colours, tagged Adobe RGB (1998): their sRGB values differ a lot.
    ramp = Image.linear_gradient("L").resize((64, 64))
    source = Image.merge("RGB", (ramp, ramp.rotate(90), Image.new("L", ramp.size, 90)))
    profile = _source("pillow__xmp_test.jpg").info["icc_profile"]
    srgb = Output(icc="srgb", quality=95 if output_format != "png" else None)
    _, dst = _encode(source, tmp_path, output_format, srgb, icc_profile=profile)
    image = _decoded(dst)
    assert "icc_profile" not in image.info
    converted = ImageCms.profileToProfile(
        source,
        ImageCms.ImageCmsProfile(io.BytesIO(profile)),
        ImageCms.createProfile("sRGB"),
        ImageCms.Intent.RELATIVE_COLORIMETRIC,
    )
    assert converted is not None
    assert _mean_difference(converted, source) > 20
    assert _mean_difference(image, converted) < 2


def test_icc_srgb_of_an_srgb_source_changes_little(tmp_path: Path) -> None:
    source = _source("skimage__astronaut.png")
    profile = source.info["icc_profile"]
    _, dst = _encode(source, tmp_path, "png", Output(icc="srgb"), icc_profile=profile)
    image = _decoded(dst)
    assert "icc_profile" not in image.info
    assert _mean_difference(image, source) < 1


def _grey_profile(gamma: float) -> bytes:
    """A minimal ICC v2 grey display profile: a white point and one gamma curve."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    tags = [
        (b"wtpt", b"XYZ " + bytes(4) + d50),
        (b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table = body = b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", offset + len(body))
        + bytes(4)
        + bytes.fromhex("02100000")
        + b"mntrGRAYXYZ "
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + d50
        + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + body


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_icc_of_a_grey_image(mode: str, tmp_path: Path) -> None:
    source = Image.new(mode, (8, 8), 128 if mode == "L" else (128, 200))
    linear = _grey_profile(1.0)
    _, dst = _encode(source, tmp_path, "png", icc_profile=linear)
    assert _decoded(dst).info.get("icc_profile") == linear
    _, dst = _encode(source, tmp_path, "webp", icc_profile=linear)  # written as RGB: no fit
    assert "icc_profile" not in _decoded(dst).info
    _, dst = _encode(source, tmp_path, "png", Output(icc="srgb"), icc_profile=linear)
    image = _decoded(dst)
    assert "icc_profile" not in image.info
    assert image.mode == mode
    assert image.getpixel((0, 0)) == (188 if mode == "L" else (188, 200))  # linear 0.5 in sRGB


def test_icc_srgb_ignores_a_broken_profile(rgb: Image.Image, tmp_path: Path) -> None:
    broken = bytes(16) + b"RGB " + bytes(200)
    _, dst = _encode(rgb, tmp_path, "png", Output(icc="srgb"), icc_profile=broken)
    image = _decoded(dst)
    assert "icc_profile" not in image.info
    assert ImageChops.difference(image, rgb).getbbox() is None


# --- BlurHash -----------------------------------------------------------------------------

BASE83 = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~")


def test_blurhash(rgb: Image.Image, rgba: Image.Image, tmp_path: Path) -> None:
    hashes = []
    for source in (rgb, rgba, _source("skimage__camera.png")):
        encoded, _ = _encode(source, tmp_path, "webp", Output(blurhash=True))
        assert encoded.blurhash is not None
        assert len(encoded.blurhash) == 4 + 2 * 4 * 3  # size, max AC, DC (4), 11 ACs (2 each)
        assert set(encoded.blurhash) <= BASE83
        assert blurhash.components(encoded.blurhash) == (4, 3)
        hashes.append(encoded.blurhash)
    assert len(set(hashes)) == 3
    assert _encode(rgb, tmp_path, "webp")[0].blurhash is None


# --- the seed's defaults ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "output_format"),
    [
        ("plasma__Path__2560x1600.jpg", "jpeg"),  # RGB with an sRGB profile
        ("plasma__Path__2560x1600.jpg", "png"),
        ("skimage__astronaut.png", "png"),
        ("skimage__camera.png", "jpeg"),  # L
        ("mate__Gulp.png", "jpeg"),  # RGBA, flattened
        ("mate__Gulp.png", "png"),
        ("pillow__xmp_test.jpg", "jpeg"),  # EXIF, XMP, Adobe RGB
    ],
)
def test_defaults_write_what_the_seed_wrote(
    name: str, output_format: OutputFormat, tmp_path: Path
) -> None:
    # Byte for byte on purpose (not a pixel tolerance): the seed's outputs must not change.
    source = _source(name, (160, 160))
    profile = source.info.get("icc_profile")
    seed = tmp_path / "seed"
    flat = ops.flatten(source.copy()) if output_format == "jpeg" else source.copy()
    codec.save(flat, str(seed), output_format=output_format, jpeg_quality=85, icc_profile=profile)
    _, dst = _encode(source, tmp_path, output_format, icc_profile=profile)
    assert dst.read_bytes() == seed.read_bytes()


# --- checks -------------------------------------------------------------------------------

PROBLEMS = [
    (Output(lossless=True), "jpeg", "`lossless`"),
    (Output(lossless=True), "png", "`lossless`"),
    (Output(lossless=True), "gif", "`lossless`"),
    (Output(colors=16), "jpeg", "`colors`"),
    (Output(colors=16), "webp", "`colors`"),
    (Output(colors=16), "avif", "`colors`"),
    (Output(progressive=True), "png", "`progressive`"),
    (Output(progressive=True), "webp", "`progressive`"),
    (Output(progressive=True), "avif", "`progressive`"),
    (Output(progressive=True), "gif", "`progressive`"),
    (Output(format="png", quality=50), "png", "`quality`"),
    (Output(format="gif", quality=50), "gif", "`quality`"),
    (Output(quality=50, lossless=True), "webp", "`quality`"),
]


def test_a_quality_for_the_uploads_own_format_is_ignored_for_png(rgb: Image.Image) -> None:
    """`quality` without a format names no format: a png upload stays png, losslessly."""
    assert output_problem(Output(quality=50), "png") is None


@pytest.mark.parametrize(("output", "output_format", "field"), PROBLEMS)
def test_output_problem(
    output: Output, output_format: OutputFormat, field: str, rgb: Image.Image, tmp_path: Path
) -> None:
    problem = output_problem(output, output_format)
    assert problem is not None
    assert problem.startswith(field)
    assert output_format in problem or "lossless" in problem
    with pytest.raises(ValueError, match=field):
        _encode(rgb, tmp_path, output_format, output)


@pytest.mark.parametrize(
    ("output", "output_format"),
    [
        (Output(), "jpeg"),
        (Output(quality=70, progressive=True, max_bytes=10_000, icc="srgb"), "jpeg"),
        (Output(lossless=True, max_bytes=10_000), "webp"),
        (Output(lossless=True), "avif"),
        (Output(quality=40), "avif"),
        (Output(colors=8, max_bytes=10_000), "png"),
        (Output(colors=8), "gif"),
        (Output(blurhash=True, background=[0, 0, 0]), "png"),
    ],
)
def test_output_fits(output: Output, output_format: OutputFormat) -> None:
    assert output_problem(output, output_format) is None


def test_resolve_format() -> None:
    assert resolve_format(Output(), "png") == "png"
    assert resolve_format(Output(format="jpg"), "png") == "jpeg"
    assert resolve_format(Output(format="avif"), "jpeg") == "avif"


def test_output_decodes_every_option() -> None:
    text = (
        b'{"format": "webp", "quality": 70, "lossless": false, "max_bytes": 20000,'
        b' "icc": "srgb", "background": "#000000", "blurhash": true, "animated": false}'
    )
    output = msgspec.json.decode(text, type=Output)
    assert (output.format, output.quality, output.max_bytes, output.icc) == (
        "webp",
        70,
        20000,
        "srgb",
    )
    for bad in (b'{"colors": 1}', b'{"colors": 257}', b'{"max_bytes": 0}', b'{"icc": "p3"}'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=Output)


# --- AVIF and HEIF inputs -----------------------------------------------------------------


def _written(image: Image.Image, pillow_format: str, **params: object) -> bytes:
    codec.register_plugins()
    out = io.BytesIO()
    image.save(out, pillow_format, **params)
    return out.getvalue()


@pytest.mark.parametrize(
    ("pillow_format", "mode", "default_output"),
    [("AVIF", "RGB", "jpeg"), ("AVIF", "RGBA", "png"), ("HEIF", "RGB", "jpeg")],
)
def test_avif_and_heif_inputs(
    pillow_format: str, mode: str, default_output: str, rgba: Image.Image
) -> None:
    source = rgba.convert(mode)
    data = _written(source, pillow_format, quality=90)
    info = codec.probe(data, max_pixels=LIMIT)
    assert (info.format, info.width, info.height, info.mode) == (pillow_format, *source.size, mode)
    assert info.default_output == default_output
    with codec.open_image(
        io.BytesIO(data), allowed=codec.DEFAULT_ALLOWED_FORMATS, max_pixels=LIMIT
    ) as image:
        codec.decode_first_frame(image, max_pixels=LIMIT)
        assert image.mode == mode
        assert _mean_difference(image, source) < 4


@pytest.mark.parametrize("pillow_format", ["AVIF", "HEIF"])
def test_avif_and_heif_inputs_obey_the_limits(pillow_format: str, rgb: Image.Image) -> None:
    data = _written(rgb, pillow_format)
    with pytest.raises(UnsupportedFormat, match=f"{pillow_format} images are not supported"):
        codec.probe(data, allowed=frozenset({"JPEG", "PNG"}), max_pixels=LIMIT)
    with pytest.raises(ImageTooLarge, match="over the limit"):
        codec.probe(data, max_pixels=rgb.width * rgb.height - 1)


@pytest.mark.parametrize("pillow_format", ["AVIF", "HEIF"])
def test_avif_and_heif_orientation(pillow_format: str) -> None:
    # AVIF reports irot/imir as an EXIF orientation to apply; libheif applies them itself.
    image = Image.new("RGB", (64, 32), "red")
    image.paste((0, 0, 255), (0, 0, 16, 32))  # blue on the left: on top once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _written(image, pillow_format, exif=exif.tobytes(), quality=90)
    info = codec.probe(data, max_pixels=LIMIT)
    assert info.displayed == (32, 64)
    with codec.open_image(
        io.BytesIO(data), allowed=frozenset({pillow_format}), max_pixels=LIMIT
    ) as opened:
        codec.decode_first_frame(opened, max_pixels=LIMIT)
        upright = ops.orient(opened, codec.read_orientation(opened))
        assert upright.size == (32, 64)
        pixel = upright.getpixel((16, 2))
        assert isinstance(pixel, tuple)
        assert pixel[2] > 200 > pixel[0]


def test_plugins_load_only_when_needed() -> None:
    code = (
        "import json, sys, imaging\n"
        "from imaging import encode\n"
        "print(json.dumps(sorted(name for name in sys.modules if name.startswith('pillow_'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []
    codec.register_plugins()
    codec.register_plugins()  # idempotent
    assert Image.OPEN["AVIF"][0].__module__ == "pillow_avif.AvifImagePlugin"
    assert Image.OPEN["HEIF"][0].__module__ == "pillow_heif.as_plugin"

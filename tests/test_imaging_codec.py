"""imaging.codec: magic-byte sniffing and header-only probing of uploads."""

from __future__ import annotations

import contextlib
import csv
import io
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imaging import (
    DEFAULT_ALLOWED_FORMATS,
    CorruptImage,
    ImageTooLarge,
    ImagingError,
    UnsupportedFormat,
    probe,
    sniff_format,
)
from imaging.codec import HEADER_BYTES
from tests.conftest import BAD, GOOD, corpus_files

LIMIT = 50_000_000


def manifest(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "MANIFEST.tsv").open(newline="") as fp:
        return {row["name"]: row for row in csv.DictReader(fp, delimiter="\t")}


def encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (64, 48), **params: Any) -> bytes:
    fills: dict[str, float | tuple[int, ...]] = {"P": 1, "RGBA": (255, 0, 0, 128), "LA": (100, 128)}
    fill = fills.get(mode, "red")
    image = Image.new(mode, size, fill)
    if mode == "P":
        image.paste(0, (0, 0, size[0] // 2, size[1]))  # use index 0 too (GIF drops unused ones)
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def mpo() -> bytes:
    out = io.BytesIO()
    frames = [Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")]
    frames[0].save(out, "MPO", save_all=True, append_images=frames[1:])
    return out.getvalue()


# --- sniff_format -------------------------------------------------------------------------

# Files Pillow itself writes, and what their first bytes say.
WRITTEN = [
    ("JPEG", "JPEG"),
    ("PNG", "PNG"),
    ("GIF", "GIF"),
    ("WEBP", "WEBP"),
    ("TIFF", "TIFF"),
    ("BMP", "BMP"),
    ("PPM", "PPM"),
    ("PCX", "PCX"),
    ("SGI", "SGI"),
    ("ICO", "ICO"),
    ("JPEG2000", "JPEG2000"),
    ("EPS", "EPS"),
    ("PDF", "PDF"),
    ("QOI", "QOI"),
    ("DDS", "DDS"),
    ("ICNS", "ICNS"),
    ("TGA", None),  # no magic number at all
    ("IM", None),
]


@pytest.mark.parametrize(("fmt", "expected"), WRITTEN)
def test_sniff_files_pillow_writes(fmt: str, expected: str | None) -> None:
    assert sniff_format(encoded(fmt)[:HEADER_BYTES]) == expected


def test_sniff_mpo_is_jpeg() -> None:
    assert sniff_format(mpo()) == "JPEG"


@pytest.mark.parametrize("path", corpus_files(GOOD), ids=lambda p: p.name)
def test_sniff_good_corpus(path: Path) -> None:
    expected = manifest(GOOD)[path.name]["format"]
    assert sniff_format(path.read_bytes()[:HEADER_BYTES]) == expected


SNIFFED_BAD = {
    "gnome__oceans.svg": "SVG",
    "handmade__Storm_first_half.jpg": "JPEG",
    "handmade__empty.jpg": None,
    "handmade__hopper_png_named.jpg": "PNG",
    "handmade__random_4096.jpg": None,
    "handmade__text.jpg": None,
    "pillow8__crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif": "TIFF",
    "pillow8__crash-0da013a13571cc8eb457a39fee8db18f8a3c7127.tif": "TIFF",
    "pillow__GHSA-5x8w-8jj5-q52h_oob_fpx_write.fpx": "FPX",
    "pillow__broken.png": "PNG",
    "pillow__broken_data_stream.png": "PNG",
    "pillow__crash-6b7f2244da6d0ae297ee0754a424213444e92778.sgi": "SGI",
    "pillow__decompression_bomb.gif": "GIF",
    "pillow__decompression_bomb.ico": "ICO",
    "pillow__duplicate_xref_entry.pdf": "PDF",
    "pillow__hopper.heif": "HEIF",
    "pillow__hopper_bad_exif.jpg": "JPEG",
    "pillow__hopper_unknown_pixel_mode.tif": "TIFF",
    "pillow__invalid-exif.jpg": "JPEG",
    "pillow__junk_jpeg_header.jpg": "JPEG",
    "pillow__libtiff_segfault.tif": "TIFF",
    "pillow__negative_size.ppm": "PPM",
    "pillow__oom-225817ca0f8c663be7ab4b9e717b02c661e66834.tif": "TIFF",
    "pillow__seek_too_large.tif": "TIFF",
    "pillow__sugarshack_bad_mpo_header.jpg": "JPEG",
    "pillow__tiff_overflow_rows_per_strip.tif": "TIFF",
    "pillow__timeout-1ee28a249896e05b83840ae8140622de8e648ba9.psd": "PSD",
    "pillow__timeout-6646305047838720": "TIFF",
    "pillow__timeout-bff0a9dc7243a8e6ede2408d2ffa6a9964698b87.fli": "FLI",
    "pillow__timeout-c8efc3fded6426986ba867a399791bae544f59bc.psd": "PSD",
    "pillow__truncated_end_chunk.png": "PNG",
    "pillow__truncated_image.png": "PNG",
    "pillow__truncated_jpeg.jpg": "JPEG",
    "pillow__ultrahdr.jpg": "JPEG",
    "pillow__unknown_compression_method.png": "PNG",
    "pillow__zero_height.j2k": "JPEG2000",
    "pillow__zero_width.gif": "GIF",
}


def test_sniff_bad_corpus_covers_every_file() -> None:
    assert set(SNIFFED_BAD) == {p.name for p in corpus_files(BAD)}


@pytest.mark.parametrize("path", corpus_files(BAD), ids=lambda p: p.name)
def test_sniff_bad_corpus(path: Path) -> None:
    assert sniff_format(path.read_bytes()[:HEADER_BYTES]) == SNIFFED_BAD[path.name]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"", None),
        (b"\xff\xd8", None),
        (b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00mif1miafMA1B", "AVIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None),  # an MP4 video
        (b"\xef\xbb\xbf  <?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
        (b"<?xml version='1.0'?><rss version='2.0'></rss>", None),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4088), None),  # OLE, but not FlashPix
        (b"BM" + bytes(16), None),  # "BM" without a valid DIB header
        (b"P1 is a plain text file", "PPM"),
        (b"Plain text", None),
        (b"\x00\x00\x02\x00\x00\x00\x00\x00", None),  # TGA, not CUR: no image count
        (b"\x00\x00\x02\x00\x01\x00\x10\x10", "CUR"),
        (b"\xff\x0a\xfa", "JXL"),
    ],
)
def test_sniff_edge_cases(header: bytes, expected: str | None) -> None:
    assert sniff_format(header) == expected


# --- probe --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", corpus_files(GOOD), ids=lambda p: p.name)
def test_probe_good_corpus(path: Path) -> None:
    row = manifest(GOOD)[path.name]
    info = probe(path.read_bytes(), max_pixels=LIMIT)
    assert (info.format, info.width, info.height, info.mode) == (
        row["format"],
        int(row["width"]),
        int(row["height"]),
        row["mode"],
    )
    with_alpha = {"RGBA", "LA"}
    assert info.has_alpha == (info.mode in with_alpha or path.name == "pillow__pil123p.png")
    if info.format == "JPEG":
        assert info.default_output == "jpeg"
    elif info.format == "PNG":
        assert info.default_output == "png"
    else:
        assert info.default_output == ("png" if info.has_alpha else "jpeg")


DEFAULT_OUTPUT = [
    pytest.param("jpeg", lambda: encoded("JPEG"), id="JPEG"),
    pytest.param("jpeg", mpo, id="MPO"),
    pytest.param("png", lambda: encoded("PNG"), id="PNG-RGB"),
    pytest.param("png", lambda: encoded("PNG", "L"), id="PNG-L"),
    pytest.param("png", lambda: encoded("PNG", "RGBA"), id="PNG-RGBA"),
    pytest.param("jpeg", lambda: encoded("GIF", "P"), id="GIF"),
    pytest.param("png", lambda: encoded("GIF", "P", transparency=0), id="GIF-transparent"),
    pytest.param("jpeg", lambda: encoded("WEBP"), id="WEBP-RGB"),
    pytest.param("png", lambda: encoded("WEBP", "RGBA"), id="WEBP-RGBA"),
    pytest.param("jpeg", lambda: encoded("TIFF"), id="TIFF-RGB"),
    pytest.param("png", lambda: encoded("TIFF", "RGBA"), id="TIFF-RGBA"),
    pytest.param("png", lambda: encoded("TIFF", "LA"), id="TIFF-LA"),
    pytest.param("jpeg", lambda: encoded("BMP"), id="BMP-RGB"),
    pytest.param("jpeg", lambda: encoded("BMP", "L"), id="BMP-L"),
]


@pytest.mark.parametrize(("expected", "make"), DEFAULT_OUTPUT)
def test_default_output(expected: str, make: Callable[[], bytes]) -> None:
    # Only ever "jpeg" or "png": mapping "jpg" from users is the app's business.
    assert probe(make(), max_pixels=LIMIT).default_output == expected


@pytest.mark.parametrize(
    ("mode", "params", "alpha"),
    [
        ("L", {"transparency": 0}, True),
        ("RGB", {"transparency": (1, 2, 3)}, True),
        ("P", {"transparency": 1}, True),
        ("LA", {}, True),
        ("P", {}, False),
        ("RGB", {}, False),
    ],
)
def test_has_alpha_counts_transparency_entries(
    mode: str, params: dict[str, Any], alpha: bool
) -> None:
    assert probe(encoded("PNG", mode, **params), max_pixels=LIMIT).has_alpha is alpha


def test_probe_reports_mpo_and_respects_its_absence_from_the_allowlist() -> None:
    data = mpo()
    assert probe(data, max_pixels=LIMIT).format == "MPO"
    with pytest.raises(UnsupportedFormat, match=r"^MPO images are not supported"):
        probe(data, allowed=frozenset({"JPEG"}), max_pixels=LIMIT)
    assert probe(encoded("JPEG"), allowed=frozenset({"JPEG"}), max_pixels=LIMIT).format == "JPEG"


def test_probe_rejects_a_format_outside_the_allowlist() -> None:
    with pytest.raises(UnsupportedFormat) as caught:
        probe(encoded("PNG"), allowed=frozenset({"JPEG"}), max_pixels=LIMIT)
    assert caught.value.message == "PNG images are not supported (allowed: JPEG)"


@pytest.mark.parametrize("fmt", ["PPM", "SGI", "PCX", "ICO", "EPS", "JPEG2000", "QOI", "DDS"])
def test_probe_never_lets_pillow_open_a_disallowed_format(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encoded(fmt)

    def refuse(*args: object, **kwargs: object) -> Image.Image:
        raise AssertionError("Image.open called for a format outside the allowlist")

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(UnsupportedFormat, match=f"^{fmt} images are not supported"):
        probe(data, max_pixels=LIMIT)


def test_probe_limits_pixels_from_the_header() -> None:
    data = (GOOD / "mate__Storm.jpg").read_bytes()
    with pytest.raises(ImageTooLarge) as caught:
        probe(data, max_pixels=1920 * 1280 - 1)
    assert "1920x1280" in caught.value.message
    assert "2,457,599" in caught.value.message
    assert probe(data, max_pixels=1920 * 1280).width == 1920


def test_probe_reads_only_the_header() -> None:
    # The second half of the scan is missing: decoding would fail, probing does not.
    info = probe((BAD / "handmade__Storm_first_half.jpg").read_bytes(), max_pixels=LIMIT)
    assert (info.format, info.width, info.height) == ("JPEG", 1920, 1280)


def test_probe_rejects_empty_and_unrecognised_data() -> None:
    for data in (b"", b"hello", bytes(100)):
        with pytest.raises(UnsupportedFormat, match=r"^not a recognised image format$"):
            probe(data, max_pixels=LIMIT)


def test_probe_rejects_a_broken_header_as_corrupt() -> None:
    with pytest.raises(CorruptImage):
        probe(b"\x89PNG\r\n\x1a\n" + bytes(40), max_pixels=LIMIT)


MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM"]


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([*MAGICS, b""]), rest=st.binary(max_size=600))
def test_probe_raises_only_imaging_errors_on_garbage(prefix: bytes, rest: bytes) -> None:
    try:
        info = probe(prefix + rest, max_pixels=LIMIT)
    except ImagingError:
        return
    assert info.format in DEFAULT_ALLOWED_FORMATS
    assert info.width * info.height <= LIMIT


SMALL_GOOD = [p for p in corpus_files(GOOD) if p.stat().st_size < 2_000_000]


@settings(max_examples=200, deadline=None)
@given(
    path=st.sampled_from(SMALL_GOOD),
    cut=st.integers(min_value=0, max_value=2048),
    flip=st.integers(min_value=0, max_value=2047),
)
def test_probe_raises_only_imaging_errors_on_damaged_headers(
    path: Path, cut: int, flip: int
) -> None:
    data = bytearray(path.read_bytes()[: max(cut, 1)] if cut < 2048 else path.read_bytes())
    if flip < len(data):
        data[flip] ^= 0xFF
    with contextlib.suppress(ImagingError):
        probe(bytes(data), max_pixels=LIMIT)


def test_concurrent_probes_leave_the_warning_filters_alone() -> None:
    # The app probes from trio worker threads; catch_warnings() is process-global.
    data = (BAD / "pillow__sugarshack_bad_mpo_header.jpg").read_bytes()  # warns when opened
    before = list(warnings.filters)
    with ThreadPoolExecutor(max_workers=8) as pool:
        formats = set(pool.map(lambda _: probe(data, max_pixels=LIMIT).format, range(400)))
    assert formats == {"JPEG"}
    assert warnings.filters == before

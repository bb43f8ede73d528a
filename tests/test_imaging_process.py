"""imaging.process: every good image through both operations, quality, metadata, modes, errors."""

from __future__ import annotations

import csv
import io
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from imaging import (
    CorruptImage,
    ImageTooLarge,
    JobSpec,
    Result,
    TruncatedImage,
    UnsupportedFormat,
    process,
)
from imaging.geometry import OutputTooLarge
from imaging.memory import PILLOW_BLOCKS_MAX, configure_memory, pillow_blocks_max
from imaging.ops import fit_size
from tests.conftest import BAD, GOOD, corpus_files

PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG"}
METADATA_KEYS = {"exif", "xmp", "XML:com.adobe.xmp", "comment", "Comment", "photoshop"}


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # process() sets Image.MAX_IMAGE_PIXELS for the (worker) process it runs in; tests run it
    # in pytest's own process, so give the global back afterwards.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB (inf if identical).

    Images with alpha are compared premultiplied: the colour under an almost transparent
    pixel is invisible, and un-premultiplying amplifies its rounding into noise.
    """
    assert a.size == b.size, (a.size, b.size)
    assert a.mode == b.mode, (a.mode, b.mode)
    premultiplied = {"RGBA": "RGBa", "LA": "La"}
    if a.mode in premultiplied:
        a, b = a.convert(premultiplied[a.mode]), b.convert(premultiplied[b.mode])
    squares = ImageStat.Stat(ImageChops.difference(a, b)).sum2
    mse = sum(squares) / (a.width * a.height * len(squares))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def assert_colour(pixel: object, expected: tuple[int, ...], *, tolerance: int) -> None:
    assert isinstance(pixel, tuple), pixel
    assert len(pixel) == len(expected), pixel
    assert all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True)), pixel


def run(
    tmp_path: Path,
    src: Path,
    operation: str,
    size: tuple[int, int],
    output_format: str = "png",
    **options: Any,
) -> tuple[Result, Image.Image]:
    dst = tmp_path / f"out.{output_format}"
    seed = {"op": "resize", "width": size[0], "height": size[1]}
    seed.update({"fit": "fill", "enlarge": True} if operation == "resize" else {"fit": "inside"})
    rendition = {"steps": [seed], "output_format": output_format}
    spec = msgspec.convert({"variants": {"default": rendition}, **options}, JobSpec)
    result = process(spec, str(src), str(dst))
    assert result.bytes == dst.stat().st_size
    assert result.format == output_format
    with Image.open(dst) as written:
        written.load()
        assert written.format == PILLOW_FORMAT[output_format]
        assert (result.width, result.height) == written.size
        out = written.copy()
        out.info = dict(written.info)
    return result, out


def reference(src: Path, size: tuple[int, int], *, transpose: bool = True) -> Image.Image:
    """Full decode + stock LANCZOS: what the fast path must stay close to."""
    with Image.open(src) as image:
        image.load()
        upright = ImageOps.exif_transpose(image) if transpose else image
        assert upright is not None
        return upright.resize(size, Image.Resampling.LANCZOS)


def good_manifest() -> dict[str, dict[str, str]]:
    with (GOOD / "MANIFEST.tsv").open(newline="") as fp:
        return {row["name"]: row for row in csv.DictReader(fp, delimiter="\t")}


def encoded(image: Image.Image, fmt: str, path: Path, **params: Any) -> Path:
    image.save(path, fmt, **params)
    return path


# --- every good image, both operations ----------------------------------------------------

TARGETS = [((200, 150), "jpeg"), ((64, 64), "png")]


@pytest.mark.parametrize(("size", "output_format"), TARGETS, ids=["200x150-jpeg", "64x64-png"])
@pytest.mark.parametrize("operation", ["resize", "thumbnail"])
@pytest.mark.parametrize("path", corpus_files(GOOD), ids=lambda p: p.name)
def test_good_corpus(
    tmp_path: Path, path: Path, operation: str, size: tuple[int, int], output_format: str
) -> None:
    row = good_manifest()[path.name]
    width, height = (int(n) for n in row["size_after_exif_transpose"].split("x"))
    _, out = run(tmp_path, path, operation, size, output_format)
    if operation == "resize":
        assert out.size == size
    else:
        assert out.size == fit_size((width, height), size)
        assert out.width <= min(size[0], width)
        assert out.height <= min(size[1], height)
        assert abs(out.height - out.width * height / width) <= 1 or (
            abs(out.width - out.height * width / height) <= 1
        )
    if output_format == "jpeg":
        assert out.mode in ("L", "RGB")
    elif row["mode"] in ("RGBA", "L"):
        assert out.mode == row["mode"]


# --- quality of the fast path -------------------------------------------------------------

PSNR_CASES = [
    ("mate__Elephants.jpg", "resize", (200, 200)),
    ("plasma__Path__2560x1600.jpg", "resize", (800, 600)),
    ("mate__Elephants_5640x3172.jpg", "thumbnail", (200, 200)),
    ("mate__Gulp.png", "resize", (300, 200)),
    ("pillow__xmp_test.jpg", "thumbnail", (200, 200)),
    ("plasma__Grey__2560x1600.jpg", "thumbnail", (200, 200)),
    ("plasma__Patak__5120x2880.png", "resize", (800, 600)),
]


@pytest.mark.parametrize(("name", "operation", "size"), PSNR_CASES)
def test_fast_path_stays_close_to_full_decode_lanczos(
    tmp_path: Path, name: str, operation: str, size: tuple[int, int]
) -> None:
    _, out = run(tmp_path, GOOD / name, operation, size)
    assert psnr(out, reference(GOOD / name, out.size)) >= 35


# --- orientation --------------------------------------------------------------------------


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    src = GOOD / "pillow__hopper_orientation_6.jpg"
    _, out = run(tmp_path, src, "resize", (96, 64))
    upright = psnr(out, reference(src, (96, 64)))
    as_stored = psnr(out, reference(src, (96, 64), transpose=False))
    assert upright >= 35
    assert as_stored < upright - 10


def quadrants(size: tuple[int, int] = (240, 160)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    w, h = size
    image.paste((255, 0, 0), (0, 0, w // 2, h // 2))
    image.paste((0, 0, 255), (w // 2, 0, w, h // 3))
    image.paste((0, 160, 0), (0, h // 2, w // 3, h))
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = encoded(quadrants(), "JPEG", tmp_path / "src.jpg", exif=exif.tobytes(), quality=95)
    quarter_turn = orientation >= 5

    _, out = run(tmp_path, src, "thumbnail", (60, 60))
    assert out.size == ((40, 60) if quarter_turn else (60, 40))
    assert psnr(out, reference(src, out.size)) >= 35

    _, out = run(tmp_path, src, "resize", (50, 30))
    assert out.size == (50, 30)
    assert psnr(out, reference(src, (50, 30))) >= 35


# --- metadata -----------------------------------------------------------------------------

WITH_METADATA = [
    "mate__Storm.jpg",
    "plasma__Path__2560x1600.jpg",
    "pillow__xmp_test.jpg",
    "pillow__flower.webp",
]


@pytest.mark.parametrize("output_format", ["jpeg", "png"])
@pytest.mark.parametrize("name", WITH_METADATA)
def test_output_carries_no_exif_or_xmp(tmp_path: Path, name: str, output_format: str) -> None:
    _, out = run(tmp_path, GOOD / name, "thumbnail", (100, 100), output_format)
    assert len(out.getexif()) == 0
    assert METADATA_KEYS.isdisjoint(out.info), set(out.info) & METADATA_KEYS
    raw = next(tmp_path.glob("out.*")).read_bytes()
    assert b"Exif\x00\x00" not in raw
    assert b"eXIf" not in raw
    assert b"http://ns.adobe.com/xap/1.0/" not in raw


@pytest.mark.parametrize("output_format", ["jpeg", "png"])
def test_icc_profile_is_kept(tmp_path: Path, output_format: str) -> None:
    src = GOOD / "plasma__Path__2560x1600.jpg"
    with Image.open(src) as image:
        profile = image.info["icc_profile"]
    _, out = run(tmp_path, src, "thumbnail", (100, 100), output_format)
    assert out.info.get("icc_profile") == profile


# --- encoding -----------------------------------------------------------------------------


def test_jpeg_quality_comes_from_the_spec(tmp_path: Path) -> None:
    src = GOOD / "mate__Storm.jpg"
    low, _ = run(tmp_path, src, "thumbnail", (400, 400), "jpeg", jpeg_quality=30)
    high, _ = run(tmp_path, src, "thumbnail", (400, 400), "jpeg", jpeg_quality=95)
    default, _ = run(tmp_path, src, "thumbnail", (400, 400), "jpeg")
    assert low.bytes < default.bytes < high.bytes


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("pillow__truncated_jpeg.jpg", TruncatedImage),
        ("handmade__Storm_first_half.jpg", TruncatedImage),
        ("pillow__broken_data_stream.png", CorruptImage),
        ("pillow__timeout-c8efc3fded6426986ba867a399791bae544f59bc.psd", UnsupportedFormat),
        ("pillow__decompression_bomb.gif", ImageTooLarge),
    ],
)
def test_bad_images_raise_and_leave_no_output(
    tmp_path: Path, name: str, error: type[Exception]
) -> None:
    dst = tmp_path / "out.jpg"
    spec = JobSpec.seed("thumbnail", 100, 100, "jpeg")
    with pytest.raises(error) as caught:
        process(spec, str(BAD / name), str(dst))
    assert not dst.exists()
    assert name not in str(caught.value)
    assert str(BAD) not in str(caught.value)


def test_a_failed_encode_removes_the_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(self: Image.Image, fp: io.BufferedWriter, *args: object, **kw: object) -> None:
        fp.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    dst = tmp_path / "out.jpg"
    spec = JobSpec.seed("thumbnail", 100, 100, "jpeg")
    with pytest.raises(OSError, match="No space left"):
        process(spec, str(GOOD / "pillow__hopper_lzw.tif"), str(dst))
    assert not dst.exists()


def test_the_spec_allowlist_applies(tmp_path: Path) -> None:
    spec = msgspec.structs.replace(
        JobSpec.seed("thumbnail", 100, 100, "jpeg"), allowed_formats=frozenset({"JPEG"})
    )
    with pytest.raises(UnsupportedFormat, match=r"^PNG images are not supported"):
        process(spec, str(GOOD / "skimage__camera.png"), str(tmp_path / "out.jpg"))


def test_the_spec_pixel_limit_applies(tmp_path: Path) -> None:
    spec = JobSpec.seed("thumbnail", 100, 100, "jpeg", max_pixels=100_000)
    with pytest.raises(ImageTooLarge, match="100,000"):
        process(spec, str(GOOD / "mate__Storm.jpg"), str(tmp_path / "out.jpg"))


def test_an_oversized_resize_target_is_refused_before_decoding(tmp_path: Path) -> None:
    spec = JobSpec.seed("resize", 20_000, 20_000, "png")
    with pytest.raises(OutputTooLarge, match="20000x20000"):
        process(spec, str(GOOD / "mate__Elephants_5640x3172.jpg"), str(tmp_path / "out.png"))
    assert not (tmp_path / "out.png").exists()


# --- the structs that cross the process boundary ------------------------------------------


def test_job_spec_validates_and_pickles() -> None:
    steps = [{"op": "resize", "width": 10, "height": 20, "fit": "inside"}]
    default = {"steps": steps, "output_format": "png"}
    spec = msgspec.convert({"variants": {"default": default}}, JobSpec)
    assert spec == JobSpec.seed("thumbnail", 10, 20, "png")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.jpeg_quality == 85
    assert spec.max_pixels == 50_000_000
    for bad in ({"jpeg_quality": 101}, {"max_pixels": 0}, {"extra": 1}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"variants": {"default": default}, **bad}, JobSpec)
    with pytest.raises(msgspec.ValidationError, match=r"variants\[\.\.\.\]\.output_format"):
        msgspec.convert({"variants": {"v": {**default, "output_format": "jpg"}}}, JobSpec)
    bad_step = {**default, "steps": [{**steps[0], "width": 0}]}
    with pytest.raises(msgspec.ValidationError, match=r"steps\[0\]\.width"):
        msgspec.convert({"variants": {"default": bad_step}}, JobSpec)


def test_result_encodes_to_json() -> None:
    result = Result(width=3, height=2, format="jpeg", bytes=1234)
    assert msgspec.json.decode(msgspec.json.encode(result)) == {
        "width": 3,
        "height": 2,
        "format": "jpeg",
        "bytes": 1234,
    }
    assert pickle.loads(pickle.dumps(result)) == result


REPEAT_FAULTS = """
import resource, sys
from imaging import JobSpec, process
spec = JobSpec.seed("resize", 200, 200, "jpeg")
process(spec, sys.argv[1], sys.argv[2])  # the first job configures the process
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    process(spec, sys.argv[1], sys.argv[2])
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def test_a_worker_reuses_freed_image_memory(tmp_path: Path) -> None:
    # Without imaging.memory, each repeat of this job page-faults ~3,000 times (fresh
    # mmaps for every decode and resample buffer); with it, under 100.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            REPEAT_FAULTS,
            str(GOOD / "mate__Elephants.jpg"),
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(out) < 600


def test_memory_settings_are_bounded() -> None:
    assert configure_memory() is True  # glibc: the allocator took both settings
    assert pillow_blocks_max() == PILLOW_BLOCKS_MAX
    assert configure_memory() is True  # idempotent

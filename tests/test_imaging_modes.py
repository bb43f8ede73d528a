"""imaging.process on every input mode: CMYK, alpha, palettes, 16-bit, multi-frame files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import GOOD
from tests.test_imaging_process import assert_colour, encoded, psnr, run


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # process() sets Image.MAX_IMAGE_PIXELS for the process it runs in: restore it after.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


# --- colour spaces and ICC profiles -------------------------------------------------------


def srgb_profile() -> bytes:
    with Image.open(GOOD / "plasma__Path__2560x1600.jpg") as image:
        profile = image.info["icc_profile"]
    assert isinstance(profile, bytes)
    return profile


def test_cmyk_is_converted_and_its_profile_dropped(tmp_path: Path) -> None:
    profile = srgb_profile()
    cmyk_profile = profile[:16] + b"CMYK" + profile[20:]  # header says CMYK: enough here
    image = Image.new("CMYK", (80, 60), (0, 255, 255, 0))  # red
    src = encoded(image, "JPEG", tmp_path / "cmyk.jpg", icc_profile=cmyk_profile, quality=95)
    for output_format in ("jpeg", "png"):
        _, out = run(tmp_path, src, "resize", (40, 30), output_format)
        assert out.mode == "RGB"
        assert "icc_profile" not in out.info
        assert_colour(out.getpixel((20, 15)), (255, 0, 0), tolerance=25)


def test_a_profile_of_another_colour_space_is_dropped(tmp_path: Path) -> None:
    src = encoded(
        Image.linear_gradient("L"), "PNG", tmp_path / "grey.png", icc_profile=srgb_profile()
    )
    _, out = run(tmp_path, src, "thumbnail", (64, 64))
    assert out.mode == "L"
    assert "icc_profile" not in out.info


# --- modes and alpha ----------------------------------------------------------------------


def half_transparent() -> Image.Image:
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (100, 0, 200, 100))
    return image


def test_jpeg_output_flattens_alpha_onto_white(tmp_path: Path) -> None:
    src = encoded(half_transparent(), "PNG", tmp_path / "rgba.png")
    _, out = run(tmp_path, src, "resize", (100, 50), "jpeg")
    assert out.mode == "RGB"
    assert_colour(out.getpixel((10, 25)), (255, 255, 255), tolerance=10)
    assert_colour(out.getpixel((90, 25)), (255, 0, 0), tolerance=15)


def test_palette_transparency_becomes_white_in_jpeg(tmp_path: Path) -> None:
    _, out = run(tmp_path, GOOD / "pillow__pil123p.png", "thumbnail", (500, 500), "jpeg")
    assert out.size == (162, 150)
    assert_colour(out.getpixel((0, 0)), (255, 255, 255), tolerance=10)


def test_png_output_keeps_alpha(tmp_path: Path) -> None:
    src = encoded(half_transparent(), "PNG", tmp_path / "rgba.png")
    _, out = run(tmp_path, src, "resize", (100, 50), "png")
    assert out.mode == "RGBA"
    assert_colour(out.getpixel((10, 25)), (0, 0, 0, 0), tolerance=0)
    assert_colour(out.getpixel((90, 25)), (255, 0, 0, 255), tolerance=0)

    _, out = run(tmp_path, GOOD / "pillow__pil123p.png", "thumbnail", (100, 100), "png")
    assert out.mode == "RGBA"


@pytest.mark.parametrize(
    ("mode", "params", "png_mode", "jpeg_mode"),
    [
        ("LA", {}, "LA", "L"),
        ("L", {"transparency": 0}, "LA", "L"),
        ("L", {}, "L", "L"),
        ("I;16", {}, "L", "L"),
        ("P", {}, "RGB", "RGB"),
        ("1", {}, "L", "L"),
    ],
)
def test_input_modes(
    tmp_path: Path, mode: str, params: dict[str, Any], png_mode: str, jpeg_mode: str
) -> None:
    image = Image.linear_gradient("L").resize((120, 80)).convert(mode)
    src = encoded(image, "PNG", tmp_path / "src.png", **params)
    for output_format, expected in (("png", png_mode), ("jpeg", jpeg_mode)):
        _, out = run(tmp_path, src, "resize", (60, 40), output_format)
        assert out.mode == expected


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    image = Image.new("I;16", (64, 64), 0)
    image.paste(65535, (32, 0, 64, 64))
    src = encoded(image, "PNG", tmp_path / "grey16.png")
    _, out = run(tmp_path, src, "resize", (32, 32))
    assert out.getpixel((2, 16)) == 0
    assert out.getpixel((30, 16)) == 255


# --- multi-frame inputs: the first frame only ---------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("GIF", {}),
        ("PNG", {}),  # APNG
        ("TIFF", {}),
        ("WEBP", {"lossless": True}),
        ("MPO", {}),
    ],
)
def test_first_frame_only(tmp_path: Path, fmt: str, params: dict[str, Any]) -> None:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "blue", "lime")]
    src = tmp_path / f"frames.{fmt.lower()}"
    frames[0].save(src, fmt, save_all=True, append_images=frames[1:], **params)
    with Image.open(src) as check:
        assert getattr(check, "n_frames", 1) == 3
    _, out = run(tmp_path, src, "resize", (32, 24), "png")
    assert_colour(out.convert("RGB").getpixel((16, 12)), (255, 0, 0), tolerance=15)


@pytest.mark.parametrize(
    "name", ["pillow__iss634.gif", "pillow__iss634.apng", "pillow__multipage.tiff"]
)
def test_first_frame_of_corpus_animations(tmp_path: Path, name: str) -> None:
    _, out = run(tmp_path, GOOD / name, "resize", (100, 80))
    with Image.open(GOOD / name) as first:
        mode = "RGBA" if out.mode == "RGBA" else "RGB"
        expected = first.convert(mode).resize((100, 80), Image.Resampling.LANCZOS)
    assert psnr(out, expected) >= 35

"""Steps through `imaging.process`: exact sizes per fit and orientation, crop placement, each
operation against an independent reference, the folded chain against a step-by-step one,
and the planned size against the produced one."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageFilter, ImageOps

from imaging import Document, GeometryError, JobSpec, Plan, plan, process
from imaging.geometry import CropOutsideImage, Orientation, OutputTooLarge, WatermarkMissing
from tests.conftest import GOOD

# Pillow's transpose that undoes each EXIF orientation's display transform.
UNDO = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def steps_of(*steps: dict[str, Any]) -> Any:
    return msgspec.convert({"steps": list(steps)}, Document).steps or []


def run(src: Path, dst: Path, *steps: dict[str, Any], **options: Any) -> Image.Image:
    spec = JobSpec.single(steps_of(*steps), options.pop("fmt", "png"), **options)
    result = process(spec, str(src), str(dst))
    image = Image.open(dst)
    image.load()
    assert (result.width, result.height) == image.size
    return image


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    a, b = a.convert("RGB"), b.convert("RGB")
    histogram = ImageChops.difference(a, b).histogram()
    squares = sum(count * (value % 256) ** 2 for value, count in enumerate(histogram))
    mse = squares / (a.width * a.height * 3)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def stripes(size: tuple[int, int], colours: list[tuple[int, int, int]]) -> Image.Image:
    """Vertical stripes of equal width, left to right."""
    image = Image.new("RGB", size)
    width = size[0] // len(colours)
    for index, colour in enumerate(colours):
        image.paste(colour, (index * width, 0, (index + 1) * width, size[1]))
    return image


def save_oriented(displayed: Image.Image, orientation: int, path: Path) -> Path:
    """Store ``displayed`` as a JPEG that shows as ``displayed`` with its EXIF orientation."""
    undo = UNDO[orientation]
    stored = displayed if undo is None else displayed.transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif.tobytes())
    return path


def close(pixel: Any, expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=False))


# --- sizes -------------------------------------------------------------------------------------

# Displayed 300x200 into a 100x100 box: what each fit gives (by hand).
FIT_SIZES = {
    "cover": (100, 100),
    "contain": (100, 100),
    "fill": (100, 100),
    "inside": (100, 67),
    "outside": (150, 100),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fit", FIT_SIZES)
def test_every_fit_gives_its_exact_size_for_every_orientation(
    tmp_path: Path, orientation: int, fit: str
) -> None:
    src = save_oriented(stripes((300, 200), [RED, GREEN, BLUE]), orientation, tmp_path / "s.jpg")
    out = run(src, tmp_path / "o.png", {"op": "resize", "width": 100, "height": 100, "fit": fit})
    assert out.size == FIT_SIZES[fit]
    # Displayed upright: red on the left, blue on the right, whatever the stored orientation.
    if fit in ("inside", "fill", "outside"):
        assert close(out.getpixel((2, out.height // 2)), RED)
        assert close(out.getpixel((out.width - 3, out.height // 2)), BLUE)


@pytest.mark.parametrize(
    ("step", "size"),
    [
        ({"width": 150}, (150, 100)),
        ({"height": 50}, (75, 50)),
        ({"width": 161, "fit": "inside"}, (161, 107)),  # the side given, exactly
        ({"width": 161, "fit": "contain"}, (161, 107)),
        ({"width": 600}, (300, 200)),  # not enlarged
        ({"height": 400, "enlarge": True}, (600, 400)),
        ({"width": 600, "height": 600, "fit": "inside"}, (300, 200)),  # never enlarged
        ({"width": 600, "height": 600, "fit": "inside", "enlarge": True}, (600, 400)),
        ({"width": 600, "height": 100, "fit": "cover"}, (300, 100)),  # not enlarged: cropped
        ({"width": 600, "height": 600, "fit": "contain"}, (600, 600)),  # still padded
        ({"width": 600, "height": 50, "fit": "fill"}, (300, 50)),
        ({"width": 600, "height": 50, "fit": "fill", "enlarge": True}, (600, 50)),
        ({"width": 600, "height": 600, "fit": "outside", "enlarge": True}, (900, 600)),
    ],
)
def test_resize_sizes_with_one_side_and_without_enlarging(
    tmp_path: Path, step: dict[str, Any], size: tuple[int, int]
) -> None:
    src = tmp_path / "s.png"
    stripes((300, 200), [RED, GREEN, BLUE]).save(src)
    out = run(src, tmp_path / "o.png", {"op": "resize", **step})
    assert out.size == size


# --- placement ----------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 6, 3, 8])
@pytest.mark.parametrize(
    ("position", "colour"),
    [("west", RED), ("centre", GREEN), ("east", BLUE), ({"x": 0.95, "y": 0.5}, BLUE)],
)
def test_a_cover_crop_keeps_the_part_its_position_names(
    tmp_path: Path, orientation: int, position: Any, colour: tuple[int, int, int]
) -> None:
    src = save_oriented(stripes((600, 200), [RED, GREEN, BLUE]), orientation, tmp_path / "s.jpg")
    out = run(
        src,
        tmp_path / "o.png",
        {"op": "resize", "width": 100, "height": 100, "position": position},
    )
    assert out.size == (100, 100)
    assert close(out.getpixel((50, 50)), colour)
    assert close(out.getpixel((10, 10)), colour)
    assert close(out.getpixel((90, 90)), colour)


def test_north_and_south_crop_the_other_axis(tmp_path: Path) -> None:
    src = tmp_path / "s.png"
    stripes((600, 200), [RED, GREEN, BLUE]).transpose(Image.Transpose.TRANSPOSE).save(src)
    for position, colour in (("north", RED), ("south", BLUE), ("southwest", BLUE)):
        step = {"op": "resize", "width": 100, "height": 100, "position": position}
        out = run(src, tmp_path / "o.png", step)
        assert close(out.getpixel((50, 50)), colour), position


def test_contain_pads_with_the_background_at_the_position(tmp_path: Path) -> None:
    src = tmp_path / "s.png"
    Image.new("RGB", (200, 100), GREEN).save(src)
    step = {"op": "resize", "width": 100, "height": 100, "fit": "contain"}
    out = run(src, tmp_path / "o.png", {**step, "background": "#ff0000", "position": "north"})
    assert out.mode == "RGB"
    assert close(out.getpixel((50, 10)), GREEN)
    assert close(out.getpixel((50, 90)), RED)
    transparent = run(src, tmp_path / "t.png", step)
    assert transparent.mode == "RGBA"
    assert transparent.getchannel("A").getpixel((50, 5)) == 0
    assert transparent.getchannel("A").getpixel((50, 50)) == 255


def test_a_cover_by_entropy_keeps_the_detailed_part(tmp_path: Path) -> None:
    """Flat grey with a patch of a real photo near the right edge: the patch stays."""
    canvas = Image.new("RGB", (900, 300), (128, 128, 128))
    with Image.open(GOOD / "skimage__astronaut.png") as photo:
        canvas.paste(photo.convert("RGB").resize((200, 200)), (660, 50))
    src = tmp_path / "s.png"
    canvas.save(src)
    for strategy in ("entropy", "attention"):
        step = {"op": "resize", "width": 300, "height": 300, "position": strategy}
        out = run(src, tmp_path / "o.png", step)
        # The patch spans x 660-860 of 900: a 300 px window can hold all of it.
        grey = Image.new("RGB", out.size, (128, 128, 128))
        detail = ImageChops.difference(out, grey).convert("L").point(lambda v: v > 8 and 255)
        assert detail.histogram()[255] >= 0.95 * 200 * 200, strategy


# --- each operation against a reference --------------------------------------------------------


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 320x240 crop of a real photo, as PNG (lossless, so references compare exactly)."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    with Image.open(GOOD / "mate__Storm.jpg") as image:
        image.convert("RGB").resize((480, 320)).crop((80, 40, 400, 280)).save(path)
    return path


def source(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


@pytest.mark.parametrize(
    ("step", "reference"),
    [
        ({"op": "flip"}, ImageOps.flip),
        ({"op": "flop"}, ImageOps.mirror),
        ({"op": "rotate", "angle": 90}, lambda im: im.rotate(-90, expand=True)),
        ({"op": "rotate", "angle": -90}, lambda im: im.rotate(90, expand=True)),
        ({"op": "rotate", "angle": 180}, lambda im: im.rotate(180)),
        ({"op": "grayscale"}, lambda im: im.convert("L")),
        ({"op": "crop", "left": 10, "top": 20, "width": 100, "height": 50}, None),
        ({"op": "crop", "left": 0.5, "top": 0.25, "width": 0.5, "height": 0.5}, None),
    ],
)
def test_lossless_steps_equal_their_reference_pixel_for_pixel(
    tmp_path: Path, photo: Path, step: dict[str, Any], reference: Any
) -> None:
    out = run(photo, tmp_path / "o.png", step)
    original = source(photo)
    if step["op"] == "crop" and isinstance(step["left"], int):
        expected = original.crop((10, 20, 110, 70))
    elif step["op"] == "crop":
        expected = original.crop((160, 60, 320, 180))
    else:
        expected = reference(original)
    assert out.size == expected.size
    assert ImageChops.difference(out.convert(expected.mode), expected).getbbox() is None


def test_rotate_by_any_angle_expands_like_pillow_and_fills_the_corners(
    tmp_path: Path, photo: Path
) -> None:
    out = run(photo, tmp_path / "o.png", {"op": "rotate", "angle": 30, "background": "#0000ff"})
    expected = source(photo).rotate(-30, Image.Resampling.BICUBIC, expand=True, fillcolor=BLUE)
    assert out.size == expected.size
    assert psnr(out, expected) > 40
    assert close(out.getpixel((1, 1)), BLUE, 0)


def test_blur_and_sharpen_match_pillow_filters_and_keep_flat_areas_flat(
    tmp_path: Path, photo: Path
) -> None:
    blurred = run(photo, tmp_path / "b.png", {"op": "blur", "sigma": 3})
    assert psnr(blurred, source(photo).filter(ImageFilter.GaussianBlur(3))) > 45
    assert psnr(blurred, source(photo)) < 35  # it did blur
    sharpened = run(photo, tmp_path / "s.png", {"op": "sharpen", "sigma": 2, "amount": 1.5})
    expected = source(photo).filter(ImageFilter.UnsharpMask(2, 150, 0))
    assert psnr(sharpened, expected) > 45
    flat = tmp_path / "flat.png"
    Image.new("RGBA", (50, 50), (10, 200, 30, 128)).save(flat)
    for step in ({"op": "blur", "sigma": 5}, {"op": "sharpen"}):
        out = run(flat, tmp_path / "f.png", step)
        # Blur works on premultiplied alpha: a round trip may move a value by one.
        extrema: Any = out.getextrema()
        for (low, high), value in zip(extrema, (10, 200, 30, 128), strict=True):
            assert value - 1 <= low <= high <= value, step


def test_modulate_by_hand_computed_pixels(tmp_path: Path) -> None:
    src = tmp_path / "s.png"
    Image.new("RGBA", (8, 8), (200, 100, 50, 77)).save(src)

    def pixel(**levels: float) -> Any:
        return run(src, tmp_path / "o.png", {"op": "modulate", **levels}).getpixel((4, 4))

    assert pixel(brightness=0.5) == (100, 50, 25, 77)
    assert pixel(contrast=0.0) == (128, 128, 128, 77)
    assert pixel(contrast=2.0) == (255, 72, 0, 77)  # (v - 128) * 2 + 128, clipped
    grey = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert close(pixel(saturation=0.0), (grey, grey, grey), 1)


def test_extend_pads_each_edge_with_the_background(tmp_path: Path, photo: Path) -> None:
    step = {"op": "extend", "top": 5, "right": 6, "bottom": 7, "left": 8, "background": [9, 8, 7]}
    out = run(photo, tmp_path / "o.png", step)
    assert out.size == (320 + 14, 240 + 12)
    for xy in ((0, 0), (333, 251), (7, 100), (328, 100), (100, 4), (100, 245)):
        assert out.getpixel(xy) == (9, 8, 7), xy
    assert ImageChops.difference(out.crop((8, 5, 328, 245)), source(photo)).getbbox() is None


def test_trim_cuts_a_border_that_matches_the_corner(tmp_path: Path, photo: Path) -> None:
    bordered = Image.new("RGB", (360, 300), (250, 250, 250))
    bordered.paste(source(photo), (15, 25))
    src = tmp_path / "s.png"
    bordered.save(src)
    out = run(src, tmp_path / "o.png", {"op": "trim", "threshold": 3})
    assert out.size == (320, 240)
    assert ImageChops.difference(out, source(photo)).getbbox() is None
    plain = tmp_path / "plain.png"
    Image.new("RGB", (40, 30), RED).save(plain)
    assert run(plain, tmp_path / "p.png", {"op": "trim"}).size == (40, 30)


def test_watermark_lands_in_its_corner_at_its_scale_and_opacity(
    tmp_path: Path, photo: Path
) -> None:
    mark = tmp_path / "mark.png"
    Image.new("RGBA", (40, 20), (255, 0, 0, 255)).save(mark)
    step = {"op": "watermark", "opacity": 1.0, "scale": 0.25, "margin": 10}
    out = run(photo, tmp_path / "o.png", step, watermark_path=str(mark))
    # 25% of 320 = 80 x 40, 10 px from the bottom-right corner.
    assert close(out.getpixel((320 - 10 - 40, 240 - 10 - 20)), RED, 0)
    assert not close(out.getpixel((320 - 5, 240 - 5)), RED, 30)
    assert out.getpixel((230 - 2, 190 - 2)) == source(photo).getpixel((228, 188))
    half = run(photo, tmp_path / "h.png", {**step, "opacity": 0.5}, watermark_path=str(mark))
    under: Any = source(photo).getpixel((270, 210))
    expected = tuple(round((255 if i == 0 else 0) * 0.5 + v * 0.5) for i, v in enumerate(under))
    assert close(half.getpixel((270, 210)), expected, 2)


def test_a_watermark_step_without_a_watermark_image_is_refused(tmp_path: Path, photo: Path) -> None:
    with pytest.raises(WatermarkMissing):
        run(photo, tmp_path / "o.png", {"op": "watermark"})
    with pytest.raises(WatermarkMissing, match=r"steps\[0\]"):
        plan(steps_of({"op": "watermark"}), (10, 10), max_pixels=100, watermark=False)


# --- the folded chain --------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 5, 6, 7])
def test_a_folded_chain_matches_the_chain_step_by_step_at_full_size(
    tmp_path: Path, orientation: int
) -> None:
    """crop, quarter turn, flip, grayscale, cover resize: decoded at a reduced JPEG scale and
    resampled once, against stock Pillow doing each step on the full image (>= 35 dB)."""
    with Image.open(GOOD / "mate__Storm.jpg") as photo:
        displayed = photo.convert("RGB")
    src = save_oriented(displayed, orientation, tmp_path / "s.jpg")
    chain = (
        {"op": "crop", "left": 0.1, "top": 0.05, "width": 0.8, "height": 0.9},
        {"op": "rotate", "angle": 90},
        {"op": "flip"},
        {"op": "grayscale"},
        {"op": "resize", "width": 300, "height": 200, "position": "east"},
    )
    out = run(src, tmp_path / "o.png", *chain)
    with Image.open(src) as stored:
        reference = ImageOps.exif_transpose(stored).convert("RGB")
    width, height = reference.size
    reference = reference.crop(
        (round(0.1 * width), round(0.05 * height), round(0.9 * width), round(0.95 * height))
    )
    reference = ImageOps.flip(reference.rotate(-90, expand=True)).convert("L")
    scale = max(300 / reference.width, 200 / reference.height)
    scaled = reference.resize(
        (round(reference.width * scale), round(reference.height * scale)),
        Image.Resampling.LANCZOS,
    )
    top = (scaled.height - 200) // 2  # east: right-hand side, centred vertically
    reference = scaled.crop((scaled.width - 300, top, scaled.width, top + 200))
    assert out.size == (300, 200)
    assert psnr(out, reference) >= 35


# --- planning ----------------------------------------------------------------------------------


def test_plans_name_the_step_that_does_not_fit() -> None:
    with pytest.raises(CropOutsideImage, match=r"steps\[1\] \(crop\).*outside the 50x40"):
        plan(
            steps_of({"op": "flip"}, {"op": "crop", "left": 40, "width": 20, "height": 10}),
            (50, 40),
            max_pixels=10_000,
            watermark=False,
        )
    with pytest.raises(OutputTooLarge, match=r"steps\[0\] \(extend\).*1,000"):
        plan(steps_of({"op": "extend", "right": 100}), (10, 10), max_pixels=1_000, watermark=False)
    chain = steps_of({"op": "crop", "width": 0.001, "height": 1.0})
    with pytest.raises(CropOutsideImage, match="empty"):
        plan(chain, (10, 10), max_pixels=100, watermark=False)


def test_a_trim_makes_the_plan_an_upper_bound() -> None:
    chain = steps_of({"op": "trim"}, {"op": "resize", "width": 10, "height": 10, "fit": "fill"})
    assert plan(chain, (50, 40), max_pixels=10_000, watermark=False) == Plan(
        width=10, height=10, exact=False
    )


def test_orientation_composes_as_pillow_transposes() -> None:
    image = stripes((30, 20), [RED, GREEN, BLUE])
    image.putpixel((0, 0), (1, 2, 3))
    for exif in range(1, 9):
        orientation = Orientation.from_exif(exif)
        for turns in range(4):
            composed = orientation.turned(turns).flipped()
            by_hand = ImageOps.exif_transpose(_with_orientation(image, exif))
            by_hand = ImageOps.flip(by_hand.rotate(-90 * turns, expand=True))
            method = composed.transpose
            mine = image if method is None else image.transpose(method)
            assert ImageChops.difference(mine, by_hand).getbbox() is None, (exif, turns)


def _with_orientation(image: Image.Image, exif: int) -> Image.Image:
    copy = image.copy()
    copy.getexif()[0x0112] = exif
    return copy


STEP = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.just("resize"),
            "width": st.integers(1, 120),
            "height": st.integers(1, 120),
            "fit": st.sampled_from(sorted(FIT_SIZES)),
            "enlarge": st.booleans(),
        }
    ),
    st.fixed_dictionaries({"op": st.just("resize"), "width": st.integers(1, 120)}),
    st.fixed_dictionaries(
        {
            "op": st.just("crop"),
            "left": st.floats(0, 0.4),
            "top": st.floats(0, 0.4),
            "width": st.floats(0.1, 0.6),
            "height": st.floats(0.1, 0.6),
        }
    ),
    st.fixed_dictionaries(
        {"op": st.just("rotate"), "angle": st.sampled_from([90, 180, 270, 33.3])}
    ),
    st.sampled_from([{"op": "flip"}, {"op": "flop"}, {"op": "grayscale"}]),
    st.fixed_dictionaries(
        {"op": st.just("extend"), "top": st.integers(0, 9), "left": st.integers(0, 9)}
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chain=st.lists(STEP, min_size=1, max_size=4), orientation=st.sampled_from([1, 6, 3]))
def test_the_planned_size_is_the_size_produced(
    tmp_path: Path, chain: list[dict[str, Any]], orientation: int
) -> None:
    src = save_oriented(stripes((96, 64), [RED, GREEN, BLUE]), orientation, tmp_path / "s.jpg")
    try:
        planned = plan(steps_of(*chain), (96, 64), max_pixels=10**7, watermark=False)
    except GeometryError as refused:  # e.g. a crop that rounds to no pixel: refused alike
        with pytest.raises(type(refused), match=re.escape(refused.message)):
            run(src, tmp_path / "o.png", *chain)
        return
    out = run(src, tmp_path / "o.png", *chain)
    assert (planned.width, planned.height) == out.size

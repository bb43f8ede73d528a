"""imaging.ops: target sizes, resampling, orientation, working modes and flattening."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from imaging import ops

sizes = st.tuples(st.integers(1, 600), st.integers(1, 600))


@settings(max_examples=150, deadline=None)
@given(size=sizes, box=sizes)
def test_fit_size_rounds_like_pillow_thumbnail(size: tuple[int, int], box: tuple[int, int]) -> None:
    reference = Image.new("L", size)
    reference.thumbnail(box, reducing_gap=None)
    assert ops.fit_size(size, box) == reference.size


@given(size=st.tuples(st.integers(1, 20_000), st.integers(1, 20_000)), box=sizes)
def test_fit_size_fits_keeps_aspect_and_never_enlarges(
    size: tuple[int, int], box: tuple[int, int]
) -> None:
    width, height = ops.fit_size(size, box)
    assert 1 <= width <= size[0]
    assert 1 <= height <= size[1]
    if (width, height) != size:
        assert width <= box[0]
        assert height <= box[1]
        assert width == box[0] or height == box[1]
        # Within a pixel of the original aspect ratio, along the side that was derived.
        assert (
            abs(height - width * size[1] / size[0]) <= 1
            or abs(width - height * size[0] / size[1]) <= 1
        )


def test_oriented_size_swaps_only_for_quarter_turns() -> None:
    for orientation in (1, 2, 3, 4):
        assert ops.oriented_size((40, 30), orientation) == (40, 30)
    for orientation in (5, 6, 7, 8):
        assert ops.oriented_size((40, 30), orientation) == (30, 40)


def test_draft_size_leaves_room_for_the_final_lanczos_step() -> None:
    # Below 1.25x, DCT-scaled decoding costs too much PSNR (measurements in process.py).
    assert ops.draft_size((200, 100)) == (250, 125)


def quadrants(mode: str = "RGB", size: tuple[int, int] = (60, 40)) -> Image.Image:
    """An asymmetric picture: every flip and turn of it looks different."""
    image = Image.new("RGB", size, "white")
    w, h = size
    image.paste((255, 0, 0), (0, 0, w // 2, h // 2))
    image.paste((0, 0, 255), (w // 2, 0, w, h // 3))
    image.paste((0, 160, 0), (0, h // 2, w // 3, h))
    return image.convert(mode)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_exif_transpose(orientation: int) -> None:
    image = quadrants()
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    reference = ImageOps.exif_transpose(image)
    assert reference is not None
    assert ops.orient(image, orientation).tobytes() == reference.tobytes()


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_resize_is_exact_and_keeps_the_mode(mode: str) -> None:
    image = quadrants(mode, (600, 400))
    for size in [(50, 50), (123, 7), (600, 400), (900, 1000)]:
        out = ops.resize(image, size)
        assert out.size == size
        assert out.mode == mode
        assert out is not image


def test_resize_premultiplies_alpha() -> None:
    # Invisible red next to opaque blue: straight-alpha resampling would bleed purple.
    image = Image.new("RGBA", (400, 100), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (200, 0, 400, 100))
    out = ops.resize(image, (40, 10))
    for x in range(40):
        red, _, blue, alpha = out.getpixel((x, 5))  # type: ignore[misc]
        if alpha > 8:
            assert red <= 8 < blue, (x, red, blue, alpha)


def test_thumbnail_fits_and_never_enlarges() -> None:
    image = quadrants("RGB", (300, 200))
    assert ops.thumbnail(image, (100, 100)).size == (100, 67)
    small = ops.thumbnail(image, (1000, 1000))
    assert small.size == (300, 200)
    assert small is not image


WORKING_MODES = [
    ("1", {}, "L"),
    ("L", {}, "L"),
    ("L", {"transparency": 0}, "LA"),
    ("LA", {}, "LA"),
    ("La", {}, "LA"),
    ("P", {}, "RGB"),
    ("P", {"transparency": 0}, "RGBA"),
    ("PA", {}, "RGBA"),
    ("RGB", {}, "RGB"),
    ("RGB", {"transparency": (0, 0, 0)}, "RGBA"),
    ("RGBA", {}, "RGBA"),
    ("RGBa", {}, "RGBA"),
    ("CMYK", {}, "RGB"),
    ("YCbCr", {}, "RGB"),
    ("LAB", {}, "RGB"),
    ("HSV", {}, "RGB"),
    ("I;16", {}, "L"),
    ("I;16B", {}, "L"),
    ("I", {}, "L"),
    ("F", {}, "L"),
]


@pytest.mark.parametrize(("mode", "info", "expected"), WORKING_MODES)
def test_to_working_mode(mode: str, info: dict[str, object], expected: str) -> None:
    image = Image.new(mode, (8, 8))
    image.info.update(info)
    assert ops.to_working_mode(image).mode == expected


def test_to_working_mode_scales_16_bit_grey() -> None:
    image = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 32896, 65535)):
        image.putpixel((x, 0), value)
    out = ops.to_working_mode(image)
    assert [out.getpixel((x, 0)) for x in range(3)] == [0, 128, 255]


def test_to_working_mode_turns_a_transparent_index_into_alpha() -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([10, 20, 30, 200, 100, 0])
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    out = ops.to_working_mode(image)
    assert out.getpixel((0, 0))[3] == 0  # type: ignore[index]
    assert out.getpixel((1, 0)) == (200, 100, 0, 255)


def test_flatten_composites_onto_white() -> None:
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 255, 255))
    out = ops.flatten(image)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)

    grey = Image.new("LA", (2, 1), (0, 0))
    grey.putpixel((1, 0), (40, 255))
    flat = ops.flatten(grey)
    assert flat.mode == "L"
    assert [flat.getpixel((0, 0)), flat.getpixel((1, 0))] == [255, 40]


def test_flatten_leaves_opaque_images_alone() -> None:
    image = Image.new("RGB", (2, 2), "red")
    assert ops.flatten(image) is image

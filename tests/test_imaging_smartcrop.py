"""imaging.smartcrop: content-aware crop windows (sharp's ``entropy`` and ``attention``).

Every scene with a subject puts it off-centre, and its test checks (``_not_by_accident``) that
the centred window would fail the same assertion, so a strategy that ignores the content
cannot pass; the subject is put at either end in turn, so one that prefers an end cannot pass
either.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter, ImageOps

from imaging.smartcrop import attention_offset, entropy_offset
from tests.conftest import GOOD

Strategy = Callable[[Image.Image, tuple[int, int]], tuple[int, int]]
Box = tuple[int, int, int, int]

BOTH = [
    pytest.param(entropy_offset, id="entropy"),
    pytest.param(attention_offset, id="attention"),
]
MODES = ["L", "LA", "RGB", "RGBA"]
GREY = 128


def _inside(offset: tuple[int, int], size: tuple[int, int], box: Box) -> float:
    """Fraction of ``box``'s area that the window at ``offset`` of ``size`` contains."""
    left, top = offset
    x0, y0 = max(left, box[0]), max(top, box[1])
    x1, y1 = min(left + size[0], box[2]), min(top + size[1], box[3])
    overlap = max(0, x1 - x0) * max(0, y1 - y0)
    return overlap / ((box[2] - box[0]) * (box[3] - box[1]))


def _centred(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    return (image_size[0] - size[0]) // 2, (image_size[1] - size[1]) // 2


def _not_by_accident(image: Image.Image, size: tuple[int, int], box: Box, needed: float) -> None:
    """The scene is a real test: the centred window does not keep ``needed`` of the subject."""
    assert _inside(_centred(image.size, size), size, box) < needed


def _blocks(size: tuple[int, int], seed: int, mode: str = "RGB", block: int = 4) -> Image.Image:
    """Random ``block``-pixel squares: detail that survives the strategies' reduced copy."""
    rng = random.Random(seed)
    cells = (-(-size[0] // block), -(-size[1] // block))
    bands = len(mode)
    noise = Image.frombytes(mode, cells, rng.randbytes(cells[0] * cells[1] * bands))
    return noise.resize((cells[0] * block, cells[1] * block), Image.Resampling.NEAREST).crop(
        (0, 0, *size)
    )


def _transpose_box(box: Box) -> Box:
    return box[1], box[0], box[3], box[2]


def _scene(
    canvas: Image.Image, patch: Image.Image, at: tuple[int, int], axis: str
) -> tuple[Image.Image, Box]:
    """``patch`` pasted onto ``canvas`` at ``at``, transposed when ``axis`` is "y"."""
    image = canvas.copy()
    image.paste(patch, at)
    box = (at[0], at[1], at[0] + patch.width, at[1] + patch.height)
    if axis == "y":
        return image.transpose(Image.Transpose.TRANSPOSE), _transpose_box(box)
    return image, box


@cache
def _corpus(name: str) -> Image.Image:
    """A corpus image, loaded once (the functions under test never modify their input)."""
    with Image.open(GOOD / name) as image:
        image.load()
        return image.copy()


# Synthetic scenes --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("end", ["start", "end"])
def test_keeps_a_detailed_patch(strategy: Strategy, mode: str, axis: str, end: str) -> None:
    """Flat grey 600x200 (or 200x600) canvas, a 60x60 patch of random blocks 20 px from one
    end: the only information in the image. The 200x200 window must contain all of it (the
    centred window contains none of it)."""
    canvas = Image.new("L", (600, 200), GREY).convert(mode)
    patch = _blocks((60, 60), seed=1).convert(mode)
    image, box = _scene(canvas, patch, (20 if end == "start" else 520, 70), axis)
    size = (200, 200)
    _not_by_accident(image, size, box, 1.0)
    assert _inside(strategy(image, size), size, box) == 1.0


@pytest.mark.parametrize(
    "colour",
    [
        pytest.param((230, 60, 160), id="saturated"),  # chroma 170: only the saturation band
        pytest.param((224, 172, 140), id="skin"),  # chroma 84: only the skin-tone band
    ],
)
@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("end", ["start", "end"])
def test_attention_keeps_a_coloured_patch_with_no_luminance_edge(
    colour: tuple[int, int, int], axis: str, end: str
) -> None:
    """A flat 50x50 patch of a saturated or a skin colour on a grey 600x200 canvas of exactly
    the patch's luminance, so the patch has no luminance edge: attention must find it by colour
    alone, and the 200x200 window must contain all of it."""
    luminance = Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0))
    assert isinstance(luminance, int)
    canvas = Image.new("RGB", (600, 200), (luminance,) * 3)
    patch = Image.new("RGB", (50, 50), colour)
    image, box = _scene(canvas, patch, (30 if end == "start" else 520, 75), axis)
    size = (200, 200)
    _not_by_accident(image, size, box, 1.0)
    assert _inside(attention_offset(image, size), size, box) == 1.0


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("corner", [(30, 20), (510, 320)])
def test_both_axes_trimmed(strategy: Strategy, corner: tuple[int, int]) -> None:
    """A 60x60 detailed patch near one corner of a flat 600x400 canvas, a 200x150 window
    (both axes trimmed): the window must contain all of the patch."""
    image, box = _scene(
        Image.new("RGB", (600, 400), (90, 90, 90)), _blocks((60, 60), 2), corner, "x"
    )
    size = (200, 150)
    _not_by_accident(image, size, box, 1.0)
    assert _inside(strategy(image, size), size, box) == 1.0


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("image_size", "size"),
    [
        ((601, 200), (200, 200)),
        ((200, 601), (200, 200)),
        ((500, 400), (301, 250)),
        ((3, 1), (1, 1)),
    ],
)
def test_flat_image_gets_the_centred_window(
    strategy: Strategy, mode: str, image_size: tuple[int, int], size: tuple[int, int]
) -> None:
    """No information anywhere: the centred window, rounded down like ``(W - w) // 2``."""
    image = Image.new("L", image_size, 77).convert(mode)
    assert strategy(image, size) == _centred(image_size, size)


# Scenes with alpha are built at two scales: 600x200 is reduced before it is looked at (and
# the premultiplied reduction already blanks colour under zero alpha), 240x80 is looked at as
# it is, hidden colours intact, so only the strategies' own handling of alpha hides them.
UNITS = [pytest.param(10, id="600x200"), pytest.param(4, id="240x80")]


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("mode", ["LA", "RGBA"])
@pytest.mark.parametrize("end", ["start", "end"])
@pytest.mark.parametrize("unit", UNITS)
def test_detail_behind_zero_alpha_is_not_chosen(
    strategy: Strategy, mode: str, end: str, unit: int
) -> None:
    """60x20 units: half the canvas is strong, colourful detail at zero alpha, and a 6x6-unit
    opaque patch of faint detail sits near the other end. Only the patch can be seen, so the
    20x20-unit window must contain it (were alpha ignored, the hidden half would win by far)."""
    hidden_x, patch_x = (30 * unit, 4 * unit) if end == "start" else (0, 50 * unit)
    box = (patch_x, 7 * unit, patch_x + 6 * unit, 13 * unit)
    image = Image.new("RGB", (60 * unit, 20 * unit), (GREY,) * 3)
    image.paste(_blocks((30 * unit, 20 * unit), seed=3, block=unit // 2), (hidden_x, 0))
    faint = _blocks((6 * unit, 6 * unit), seed=4, mode="L", block=unit // 2)
    image.paste(faint.point(lambda v: 112 + v // 8).convert("RGB"), box[:2])
    alpha = Image.new("L", image.size, 0)
    alpha.paste(255, box)
    image.putalpha(alpha)
    image = image.convert(mode)
    size = (20 * unit, 20 * unit)
    _not_by_accident(image, size, box, 1.0)
    assert _inside(strategy(image, size), size, box) == 1.0


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("mode", ["LA", "RGBA"])
@pytest.mark.parametrize("unit", UNITS)
def test_fully_transparent_detail_counts_as_flat(strategy: Strategy, mode: str, unit: int) -> None:
    """60x20 units, detail on the right-hand 25 units only, all of it at zero alpha: nothing
    is visible, so the 20x20-unit window is centred."""
    image = Image.new("RGB", (60 * unit, 20 * unit), (GREY,) * 3)
    image.paste(_blocks((25 * unit, 20 * unit), seed=5, block=unit // 2), (35 * unit, 0))
    image.putalpha(0)
    image = image.convert(mode)
    assert strategy(image, (20 * unit, 20 * unit)) == (20 * unit, 0)


@settings(max_examples=80, deadline=None)
@given(
    strategy=st.sampled_from([entropy_offset, attention_offset]),
    mode=st.sampled_from(MODES),
    image_size=st.tuples(st.integers(1, 700), st.integers(1, 500)),
    fractions=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    content=st.sampled_from(["flat", "noise", "blocks"]),
    seed=st.integers(0, 2**16),
)
def test_window_is_always_inside_the_image(
    strategy: Strategy,
    mode: str,
    image_size: tuple[int, int],
    fractions: tuple[float, float],
    content: str,
    seed: int,
) -> None:
    """Any size, mode and content: 0 <= left <= W - w and 0 <= top <= H - h, and a window of
    the image's own size is at (0, 0)."""
    width, height = image_size
    size = (1 + round(fractions[0] * (width - 1)), 1 + round(fractions[1] * (height - 1)))
    if content == "flat":
        image = Image.new("L", image_size, 200).convert(mode)
    elif content == "noise":
        rng = random.Random(seed)
        image = Image.frombytes(mode, image_size, rng.randbytes(width * height * len(mode)))
    else:
        image = _blocks(image_size, seed, mode=mode, block=7)
    left, top = strategy(image, size)
    assert 0 <= left <= width - size[0]
    assert 0 <= top <= height - size[1]
    assert strategy(image, image_size) == (0, 0)


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", [pytest.param(512, id="reduced"), pytest.param(200, id="as-is")])
def test_input_image_is_not_modified(strategy: Strategy, mode: str, side: int) -> None:
    """The functions read their input only: pixels, mode, size and info are unchanged, both
    for an image they reduce first and for one small enough to be looked at as it is."""
    image = _corpus("skimage__astronaut.png").resize((side, side)).convert(mode)
    if mode in ("LA", "RGBA"):
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    image.info["marker"] = "kept"
    before = (image.mode, image.size, image.tobytes(), dict(image.info))
    for size in [(side // 2, side), (side, side // 3), (side // 2, side // 2), (side, side)]:
        strategy(image, size)
    assert (image.mode, image.size, image.tobytes(), dict(image.info)) == before


@pytest.mark.parametrize("strategy", BOTH)
def test_rejects_what_it_cannot_crop(strategy: Strategy) -> None:
    """A window larger than the image or empty, or an image outside the working modes."""
    image = Image.new("RGB", (100, 50))
    for size in [(101, 50), (100, 51), (0, 50), (100, 0)]:
        with pytest.raises(ValueError, match="does not fit"):
            strategy(image, size)
    with pytest.raises(ValueError, match="needs an L, LA, RGB or RGBA image"):
        strategy(image.convert("P"), (50, 50))


# Real photos -------------------------------------------------------------------------------

# skimage__astronaut.png, 512x512: Eileen Collins' head (hair to chin) in this box; the orange
# suit fills the lower half, the flag the left edge, a model shuttle the upper right.
ASTRONAUT_HEAD: Box = (155, 20, 300, 165)


@pytest.mark.parametrize("height", [256, 192, 160])
def test_attention_keeps_the_astronauts_face(height: int) -> None:
    """skimage astronaut, window 512 x ``height`` (trimming height): the face is skin-toned
    and full of edges, so attention must keep at least 80% of the head box, which sits near
    the top (the centred window keeps 26% or less). Entropy is not asserted here: it prefers
    the textured suit and helmet below, as libvips' does."""
    image = _corpus("skimage__astronaut.png")
    size = (512, height)
    _not_by_accident(image, size, ASTRONAUT_HEAD, 0.8)
    assert _inside(attention_offset(image, size), size, ASTRONAUT_HEAD) >= 0.8


@pytest.mark.parametrize(
    ("columns", "width"),
    [
        pytest.param((150, 512), 181, id="head-at-left"),
        pytest.param((0, 330), 165, id="head-at-right"),
    ],
)
def test_entropy_keeps_the_astronauts_head_when_reframed(
    columns: tuple[int, int], width: int
) -> None:
    """The astronaut photo cut to columns ``columns`` so that the head is near one side
    (left of the shuttle, or right of the flag), then trimmed to half its width: the head is
    the busiest part of the frame, so entropy must keep at least 80% of it. (Attention is not
    asserted: in the left-hand framing the saturated orange suit and the shuttle pull the
    window right, to 79% of the head.)"""
    image = _corpus("skimage__astronaut.png").crop((columns[0], 0, columns[1], 512))
    head = (
        ASTRONAUT_HEAD[0] - columns[0],
        ASTRONAUT_HEAD[1],
        ASTRONAUT_HEAD[2] - columns[0],
        ASTRONAUT_HEAD[3],
    )
    size = (width, 512)
    _not_by_accident(image, size, head, 0.8)
    assert _inside(entropy_offset(image, size), size, head) >= 0.8


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("flip", [False, True])
def test_flat_sky_is_what_gets_trimmed(strategy: Strategy, flip: bool) -> None:
    """skimage camera (512x512, greyscale): rows 0-63 are flat, featureless sky (the
    cameraman's hair starts at row 65, the buildings lower still); everything below is
    detail. Trimming to 512x448 must take (nearly) all 64 rows from the sky: top >= 56.
    Flipped upside down, the sky is at the bottom and top <= 8. The centred window (top 32)
    fails both."""
    image = _corpus("skimage__camera.png")
    if flip:
        image = ImageOps.flip(image)
    left, top = strategy(image, (512, 448))
    assert left == 0
    if flip:
        assert top <= 8
    else:
        assert top >= 56


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("mirror", [False, True])
def test_keeps_the_opaque_artwork_of_a_transparent_png(strategy: Strategy, mirror: bool) -> None:
    """mate Gulp.png (1920x1200 RGBA): the artwork (bubbles, ribbons) is opaque only in
    columns 1428-1919; the rest is transparent, with a pink-to-purple gradient hidden in its
    colour channels. A 600x1200 window must keep at least 80% of the artwork (the centred one
    keeps none); mirrored, the same on the left."""
    image = _corpus("mate__Gulp.png")
    artwork: Box = (1428, 0, 1920, 1200)
    if mirror:
        image = ImageOps.mirror(image)
        artwork = (0, 0, 1920 - 1428, 1200)
    size = (600, 1200)
    _not_by_accident(image, size, artwork, 0.8)
    assert _inside(strategy(image, size), size, artwork) >= 0.8


@cache
def _storm_backdrop() -> Image.Image:
    """mate Storm.jpg (a blurred-motion landscape) as a 1200x400 out-of-focus backdrop."""
    storm = _corpus("mate__Storm.jpg").resize((1200, 400), Image.Resampling.BOX)
    return storm.filter(ImageFilter.GaussianBlur(12))


@pytest.mark.parametrize("strategy", BOTH)
@pytest.mark.parametrize("backdrop", ["flat", "blurred"])
@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("x", [60, 990])
def test_keeps_a_real_face_placed_off_centre(
    strategy: Strategy, backdrop: str, axis: str, x: int
) -> None:
    """The astronaut's head and shoulders (150x175 px cut from the photo) pasted near one end
    of a 1200x400 canvas, either flat grey-blue or the Storm photo blurred out of focus, and
    transposed for the vertical case. The 400x400 window must keep at least 80% of the face
    crop (the centred window, 400-800, keeps none)."""
    canvas = (
        Image.new("RGB", (1200, 400), (120, 130, 140)) if backdrop == "flat" else _storm_backdrop()
    )
    face = _corpus("skimage__astronaut.png").crop((150, 15, 300, 190))
    image, box = _scene(canvas, face, (x, 120), axis)
    size = (400, 400)
    _not_by_accident(image, size, box, 0.8)
    assert _inside(strategy(image, size), size, box) >= 0.8


@pytest.mark.parametrize("strategy", BOTH)
def test_size_of_the_image_is_the_origin(strategy: Strategy) -> None:
    """Nothing to trim: (0, 0), whatever the content."""
    image = _corpus("skimage__astronaut.png")
    assert strategy(image, image.size) == (0, 0)


def test_scene_helper_transposes_the_box_with_the_image() -> None:
    """The tests' own scene builder: the subject box follows the image when transposed."""
    image, box = _scene(Image.new("L", (60, 20)), Image.new("L", (5, 3), 255), (40, 2), "y")
    assert image.size == (20, 60)
    assert image.getbbox() == box

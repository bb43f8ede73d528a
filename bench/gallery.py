"""Before/after pictures of every step, for the README: what each ``op`` and option does.

Not a measurement: it makes small JPEGs (at most 240 pixels wide, quality 80) in
``bench/gallery/`` from one corpus photo, ``skimage__astronaut.png`` (512x512: a face, a
flag, a model shuttle, a helmet, so content-aware crops have something to find). Every
picture goes through ``imaging.process``, the worker's own code path, with the steps listed
in ``GALLERY``; the file names are fixed (``resize-cover-entropy.jpg`` ...), so a rerun
rewrites the same files and ``git diff`` shows what changed.

Two inputs are made in a temporary folder first, also with ``imaging.process``: for
``trim``, the photo with a flat 48-pixel border (an ``extend`` step, PNG so the border stays
exactly flat); for ``watermark``, a 200x200 RGBA PNG drawn with ``ImageDraw`` (a ring and a
triangle, no text) used as ``WATERMARK_PATH``.

Run from the project root::

    python -m bench.gallery              # writes bench/gallery/*.jpg, prints a Markdown grid
    python -m bench.gallery --columns 3  # the grid with 3 pictures a row

Fails if a picture is over ``MAX_PICTURE_BYTES`` or the folder over ``MAX_FOLDER_BYTES``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from PIL import Image, ImageDraw

import imaging
from bench.workloads import corpus_dir

__all__ = ["GALLERY", "Picture", "main", "make_gallery", "markdown_grid"]

ROOT = Path(__file__).resolve().parent
GALLERY_DIR = ROOT / "gallery"
SOURCE = "skimage__astronaut.png"
WIDTH = 240
QUALITY = 80
MAX_PICTURE_BYTES = 40_000
MAX_FOLDER_BYTES = 600_000
BORDER = 48
BORDER_COLOUR = "#2a9d8f"
TRIM_SOURCE = "bordered"  # input names besides the corpus photo
WATERMARK = "watermark.png"

_SMALL: dict[str, Any] = {"op": "resize", "width": WIDTH}
_STRIP = {"op": "resize", "width": WIDTH, "height": 100}


class Picture(msgspec.Struct, frozen=True, kw_only=True):
    """One gallery picture: its file, a caption, the steps that made it, from which input."""

    name: str
    caption: str
    steps: list[dict[str, Any]]
    source: str = ""  # "" for the corpus photo, else TRIM_SOURCE

    def spec(self, watermark: Path) -> imaging.JobSpec:
        steps = msgspec.convert(self.steps, list[imaging.Step])
        return imaging.JobSpec.single(
            steps, "jpeg", jpeg_quality=QUALITY, watermark_path=str(watermark)
        )


GALLERY: tuple[Picture, ...] = (
    Picture(name="original", caption="the source (512x512)", steps=[_SMALL]),
    Picture(
        name="resize-cover-centre",
        caption="`resize` 240x100 `cover` (position `centre`)",
        steps=[_STRIP],
    ),
    Picture(
        name="resize-cover-entropy",
        caption="`cover`, position `entropy`: the busiest band, just below the centre",
        steps=[{**_STRIP, "position": "entropy"}],
    ),
    Picture(
        name="resize-cover-attention",
        caption="`cover`, position `attention`: the face (skin tones, detail)",
        steps=[{**_STRIP, "position": "attention"}],
    ),
    Picture(
        name="resize-cover-focal",
        caption='`cover`, focal point `{"x": 0.5, "y": 0.85}`',
        steps=[{**_STRIP, "position": {"x": 0.5, "y": 0.85}}],
    ),
    Picture(
        name="resize-cover-north",
        caption="`cover`, position `north`",
        steps=[{**_STRIP, "position": "north"}],
    ),
    Picture(
        name="resize-contain",
        caption='`resize` 240x100 `contain`, background `"#264653"`',
        steps=[{**_STRIP, "fit": "contain", "background": "#264653"}],
    ),
    Picture(
        name="resize-fill",
        caption="`resize` 240x100 `fill` (aspect ignored)",
        steps=[{**_STRIP, "fit": "fill"}],
    ),
    Picture(
        name="resize-inside",
        caption="`resize` 240x100 `inside`: 100x100",
        steps=[{**_STRIP, "fit": "inside"}],
    ),
    Picture(
        name="resize-outside",
        caption="`resize` 240x100 `outside`: 240x240",
        steps=[{**_STRIP, "fit": "outside"}],
    ),
    Picture(
        name="crop",
        caption="`crop` left 0.25, top 0.1, width 0.5, height 0.5",
        steps=[{"op": "crop", "left": 0.25, "top": 0.1, "width": 0.5, "height": 0.5}, _SMALL],
    ),
    Picture(name="rotate-90", caption="`rotate` 90", steps=[{"op": "rotate", "angle": 90}, _SMALL]),
    Picture(
        name="rotate-30",
        caption='`rotate` 30, background `"#e9c46a"`',
        steps=[{"op": "rotate", "angle": 30, "background": "#e9c46a"}, _SMALL],
    ),
    Picture(name="flip", caption="`flip` (top to bottom)", steps=[{"op": "flip"}, _SMALL]),
    Picture(name="flop", caption="`flop` (left to right)", steps=[{"op": "flop"}, _SMALL]),
    Picture(name="blur", caption="`blur` sigma 3", steps=[_SMALL, {"op": "blur", "sigma": 3}]),
    Picture(
        name="sharpen",
        caption="`sharpen` sigma 1.5, amount 3",
        steps=[_SMALL, {"op": "sharpen", "sigma": 1.5, "amount": 3}],
    ),
    Picture(name="grayscale", caption="`grayscale`", steps=[{"op": "grayscale"}, _SMALL]),
    Picture(
        name="modulate",
        caption="`modulate` brightness 1.1, saturation 1.8, contrast 1.3",
        steps=[
            {"op": "modulate", "brightness": 1.1, "saturation": 1.8, "contrast": 1.3},
            _SMALL,
        ],
    ),
    Picture(
        name="extend",
        caption='`extend` 24 each side, background `"#e76f51"`',
        steps=[
            {
                "op": "extend",
                "top": 24,
                "right": 24,
                "bottom": 24,
                "left": 24,
                "background": "#e76f51",
            },
            _SMALL,
        ],
    ),
    Picture(
        name="trim-source",
        caption=f"a source with a flat {BORDER}-pixel border",
        steps=[_SMALL],
        source=TRIM_SOURCE,
    ),
    Picture(
        name="trim",
        caption="`trim` (threshold 10) of it",
        steps=[{"op": "trim"}, _SMALL],
        source=TRIM_SOURCE,
    ),
    Picture(
        name="watermark",
        caption="`watermark` opacity 0.7, scale 0.25, `southeast`",
        steps=[{"op": "watermark", "opacity": 0.7, "scale": 0.25}, _SMALL],
    ),
)


def make_watermark(path: Path) -> None:
    """A 200x200 RGBA mark: a white ring around a white triangle, dark outline, clear
    elsewhere."""
    mark = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    draw = ImageDraw.Draw(mark)
    draw.ellipse((8, 8, 192, 192), outline=(255, 255, 255, 255), width=18)
    draw.ellipse((4, 4, 196, 196), outline=(20, 20, 20, 160), width=4)
    draw.polygon([(100, 48), (154, 142), (46, 142)], fill=(255, 255, 255, 255))
    mark.save(path, format="PNG")


def make_bordered(photo: Path, path: Path) -> imaging.Result:
    """The photo with a flat border on every side, for ``trim``."""
    extend: dict[str, Any] = {"op": "extend", "background": BORDER_COLOUR}
    extend.update({side: BORDER for side in ("top", "right", "bottom", "left")})
    steps = msgspec.convert([extend], list[imaging.Step])
    return imaging.process(imaging.JobSpec.single(steps, "png"), str(photo), str(path))


def make_gallery(corpus: Path, folder: Path) -> list[tuple[Picture, imaging.Result]]:
    """Write every picture of ``GALLERY`` into ``folder``; remove other ``*.jpg`` there."""
    folder.mkdir(parents=True, exist_ok=True)
    made: list[tuple[Picture, imaging.Result]] = []
    with tempfile.TemporaryDirectory(prefix="imgjobs-gallery-") as scratch:
        inputs = {"": corpus / SOURCE, TRIM_SOURCE: Path(scratch) / f"{TRIM_SOURCE}.png"}
        make_bordered(inputs[""], inputs[TRIM_SOURCE])
        watermark = Path(scratch) / WATERMARK
        make_watermark(watermark)
        for picture in GALLERY:
            result = imaging.process(
                picture.spec(watermark),
                str(inputs[picture.source]),
                str(folder / f"{picture.name}.jpg"),
            )
            made.append((picture, result))
    wanted = {f"{picture.name}.jpg" for picture in GALLERY}
    for stale in folder.glob("*.jpg"):
        if stale.name not in wanted:
            stale.unlink()
    return made


def markdown_grid(made: Sequence[tuple[Picture, imaging.Result]], columns: int) -> str:
    """The pictures as a Markdown table: images on one row, their captions under them."""
    lines: list[str] = []
    for start in range(0, len(made), columns):
        row = made[start : start + columns]
        cells = [f"![{p.name}](bench/gallery/{p.name}.jpg)" for p, _ in row]
        captions = [p.caption for p, _ in row]
        if not lines:
            lines += ["| " + " | ".join(cells) + " |", "|" + "---|" * len(row)]
        else:
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("| " + " | ".join(captions) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gallery", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--folder", type=Path, default=GALLERY_DIR)
    parser.add_argument("--columns", type=int, default=4, help="pictures a row in the grid")
    args = parser.parse_args(argv)
    made = make_gallery(args.corpus, args.folder)
    total = 0
    for picture, result in made:
        total += result.bytes
        steps = json.dumps(picture.steps, separators=(",", ":"))
        print(f"{picture.name}.jpg {result.width}x{result.height} {result.bytes} B  {steps}")
        if result.bytes > MAX_PICTURE_BYTES:
            raise SystemExit(
                f"{picture.name}.jpg is {result.bytes} bytes: over {MAX_PICTURE_BYTES}"
            )
    print(f"{len(made)} pictures, {total} bytes in {args.folder}")
    if total > MAX_FOLDER_BYTES:
        raise SystemExit(f"the gallery is {total} bytes: over {MAX_FOLDER_BYTES}")
    print()
    print(markdown_grid(made, max(1, args.columns)))


if __name__ == "__main__":
    main()

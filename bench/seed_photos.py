"""The photos of ``bench.seed_api``: 20 and 24 MP camera-sized JPEGs made from corpus photos.

The corpus has no 20 or 24 MP camera JPEG of the sizes issue 12's seed-API rows name (a
4.4 MB and a 0.5 MB base64 JSON body), so each is made in a temporary folder from a corpus
photo, the same way every run (same Pillow, same bytes): cut to the target's aspect ratio at
the centre, resized with LANCZOS, saved as a JPEG at a fixed quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec
from PIL import Image

__all__ = ["CASES", "PhotoRecipe", "make_photo"]


class PhotoRecipe(msgspec.Struct, frozen=True, kw_only=True):
    """How a case's photo is made from a corpus photo, and the job it gets."""

    case: str
    corpus_photo: str
    size: tuple[int, int]  # cut to this aspect ratio at the centre, then LANCZOS to it
    quality: int
    optimize: bool  # optimized Huffman tables (smaller file, same pixels)
    operation: Literal["resize", "thumbnail"]
    width: int
    height: int


CASES: dict[str, PhotoRecipe] = {
    r.case: r
    for r in (
        PhotoRecipe(
            case="20mp-thumbnail",
            corpus_photo="plasma__Path__2560x1600.jpg",
            size=(5472, 3648),
            quality=85,
            optimize=False,
            operation="thumbnail",
            width=200,
            height=200,
        ),
        PhotoRecipe(
            case="24mp-resize",
            corpus_photo="mate__Storm.jpg",
            size=(6000, 4000),
            quality=64,
            optimize=True,
            operation="resize",
            width=800,
            height=600,
        ),
    )
}


def make_photo(recipe: PhotoRecipe, corpus: Path, folder: Path) -> Path:
    """The case's JPEG in ``folder``, named after the case."""
    path = folder / f"{recipe.case}.jpg"
    target_width, target_height = recipe.size
    with Image.open(corpus / recipe.corpus_photo) as photo:
        photo.load()
        width, height = photo.size
        kept_width = min(width, round(height * target_width / target_height))
        kept_height = min(height, round(kept_width * target_height / target_width))
        left, top = (width - kept_width) // 2, (height - kept_height) // 2
        box = (left, top, left + kept_width, top + kept_height)
        image = photo.convert("RGB").resize(recipe.size, Image.Resampling.LANCZOS, box=box)
    image.save(path, format="JPEG", quality=recipe.quality, optimize=recipe.optimize)
    return path

"""The benchmark workloads (corpus image + job) and how close an output is to a reference.

Every workload reads its image from the corpus's ``good/`` folder (``bench.corpus`` says
where the corpus is); nothing is copied into the repository. ``onepixel`` is
made in memory: a 1x1 PNG whose job costs nothing, so it measures the service's own
per-job overhead (what the original Go service's "25 jobs/s" benchmark measured).

Quality is PSNR against the stock way to the same size: full decode, EXIF transpose, then
``Image.resize(size, LANCZOS)``. Images with alpha are compared flattened on white, since
the colour of fully transparent pixels is invisible.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Literal

import msgspec
from PIL import Image, ImageChops, ImageOps

import imaging
from bench.corpus import corpus_root

__all__ = [
    "DEFAULT_WORKLOADS",
    "WORKLOADS",
    "Workload",
    "corpus_dir",
    "job_spec",
    "psnr",
    "reference_psnr",
    "source_bytes",
    "source_path",
]

MAX_PIXELS = 50_000_000
Operation = Literal["resize", "thumbnail"]


class Workload(msgspec.Struct, frozen=True, kw_only=True):
    """One kind of job: which image, which operation, which size."""

    name: str
    source: str  # a file name in the corpus, or "" for the in-memory 1x1 PNG
    operation: Operation
    width: int
    height: int
    description: str

    @property
    def job(self) -> str:
        return f"{self.operation} {self.width}x{self.height}"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            name="elephants-1080",
            source="mate__Elephants.jpg",
            operation="resize",
            width=200,
            height=200,
            description="1920x1080 progressive JPEG, 1 MB",
        ),
        Workload(
            name="path-1600",
            source="plasma__Path__2560x1600.jpg",
            operation="resize",
            width=800,
            height=600,
            description="2560x1600 baseline JPEG photo with ICC profile, 0.9 MB",
        ),
        Workload(
            name="elephants-5640",
            source="mate__Elephants_5640x3172.jpg",
            operation="thumbnail",
            width=200,
            height=200,
            description="5640x3172 progressive JPEG, 16 MB",
        ),
        Workload(
            name="gulp-alpha",
            source="mate__Gulp.png",
            operation="resize",
            width=300,
            height=200,
            description="1920x1200 RGBA PNG with real alpha, 2 MB",
        ),
        Workload(
            name="onepixel",
            source="",
            operation="resize",
            width=100,
            height=100,
            description="1x1 PNG made in memory: per-job overhead only",
        ),
        Workload(
            name="storm-1280",
            source="mate__Storm.jpg",
            operation="thumbnail",
            width=200,
            height=200,
            description="1920x1280 baseline JPEG photo, 0.7 MB",
        ),
    )
}
DEFAULT_WORKLOADS = ("elephants-1080", "path-1600", "elephants-5640", "gulp-alpha", "onepixel")
ONE_PIXEL_NAME = "onepixel.png"


def corpus_dir() -> Path:
    """The corpus's ``good/`` folder (see ``bench.corpus.corpus_root``)."""
    return corpus_root() / "good"


def one_pixel_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def source_bytes(workload: Workload, corpus: Path) -> bytes:
    """The image bytes a client uploads for ``workload``."""
    if not workload.source:
        return one_pixel_png()
    return (corpus / workload.source).read_bytes()


def source_path(workload: Workload, corpus: Path, scratch: Path) -> Path:
    """A file holding the workload's image: the corpus file itself, or one in ``scratch``."""
    if workload.source:
        return corpus / workload.source
    path = scratch / ONE_PIXEL_NAME
    if not path.exists():
        path.write_bytes(one_pixel_png())
    return path


def job_spec(workload: Workload, data: bytes, output_format: str | None = None) -> imaging.JobSpec:
    """The spec the service would build: same default output format, same limits."""
    info = imaging.probe(data, max_pixels=MAX_PIXELS)
    chosen = info.default_output if output_format is None else output_format
    return imaging.JobSpec.seed(
        workload.operation,
        workload.width,
        workload.height,
        "png" if chosen == "png" else "jpeg",
        max_pixels=MAX_PIXELS,
    )


def _comparable(image: Image.Image) -> Image.Image:
    """RGB (or L) pixels as seen: alpha flattened on white."""
    if image.mode in ("RGBA", "LA", "PA", "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB") if image.mode not in ("RGB", "L") else image


def psnr(first: Image.Image, second: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB over all channels; infinity when identical."""
    a, b = _comparable(first), _comparable(second)
    if a.size != b.size:
        raise ValueError(f"cannot compare {a.size} with {b.size}")
    if a.mode != b.mode:
        a, b = a.convert("RGB"), b.convert("RGB")
    histogram = ImageChops.difference(a, b).histogram()
    squares = sum(count * (i % 256) ** 2 for i, count in enumerate(histogram))
    mse = squares / (a.width * a.height * len(a.getbands()))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def reference_image(workload: Workload, data: bytes, size: tuple[int, int]) -> Image.Image:
    """Full decode + EXIF transpose + stock LANCZOS to ``size`` (the output's size)."""
    with Image.open(io.BytesIO(data)) as opened:
        upright = ImageOps.exif_transpose(opened)
        return upright.resize(size, Image.Resampling.LANCZOS)


def reference_psnr(workload: Workload, data: bytes, output: bytes) -> float:
    """PSNR of an output image (as encoded) against the reference at the output's size."""
    with Image.open(io.BytesIO(output)) as result:
        result.load()
        reference = reference_image(workload, data, result.size)
        return psnr(result, reference)

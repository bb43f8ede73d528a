"""The job document: a chain of steps and an output, as msgspec Structs (imaging's own input).

Each step is a Struct tagged by ``op`` (names follow sharp, options imgproxy), so one
``msgspec.json.decode(..., type=Document)`` validates a whole document and names the path of
the first bad field (``$.steps[1].width``). The web service re-uses these types as its wire
types, and the OpenAPI schema is generated from them. Limits that depend on the deployment
(``MAX_STEPS``, ``MAX_DIMENSION``) are checked by the service; the bounds here are the ones
that hold everywhere.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "STEP_LIMIT",
    "Blur",
    "Color",
    "Compass",
    "Crop",
    "Document",
    "Extend",
    "Fit",
    "Flip",
    "Flop",
    "FocalPoint",
    "Grayscale",
    "Modulate",
    "Output",
    "Position",
    "Resize",
    "Rotate",
    "Sharpen",
    "Step",
    "Trim",
    "Variant",
    "Watermark",
    "seed_steps",
]

#: No document has more steps than this, whatever ``MAX_STEPS`` says (decoding stops there).
STEP_LIMIT: Final = 100
#: No document has more variants than this, whatever ``MAX_VARIANTS`` says.
VARIANT_LIMIT: Final = 100
#: Bounds every pixel amount a step names; the service's ``MAX_DIMENSION`` is usually lower.
PIXEL_LIMIT: Final = 65_535

Pixels = Annotated[int, Meta(ge=1, le=PIXEL_LIMIT)]
Margin = Annotated[int, Meta(ge=0, le=PIXEL_LIMIT)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Share = Annotated[float, Meta(gt=0.0, le=1.0)]
Level = Annotated[float, Meta(ge=0.0, le=10.0)]
Channel = Annotated[int, Meta(ge=0, le=255)]
#: ``"#rrggbb"``, ``"#rrggbbaa"``, ``[r, g, b]`` or ``[r, g, b, a]``.
Color = (
    Annotated[str, Meta(pattern=r"^#([0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")]
    | Annotated[list[Channel], Meta(min_length=3, max_length=4)]
)
Compass = Literal[
    "centre",
    "center",
    "north",
    "northeast",
    "east",
    "southeast",
    "south",
    "southwest",
    "west",
    "northwest",
]
Fit = Literal["cover", "contain", "fill", "inside", "outside"]


class FocalPoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A point the crop is centred on, as fractions of the width and height."""

    x: Fraction
    y: Fraction


Position = Compass | Literal["entropy", "attention"] | FocalPoint


class _Step(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="op",
):
    pass


class Resize(_Step, tag="resize", frozen=True, kw_only=True):
    """Scale to a box: ``cover`` fills it and crops the overflow at ``position``;
    ``contain`` fits inside and pads with ``background``; ``fill`` ignores the aspect ratio;
    ``inside`` fits inside; ``outside`` covers without cropping. One side alone keeps the
    aspect ratio. Never scales up unless ``enlarge`` (``contain`` still pads to the box)."""

    width: Pixels | None = None
    height: Pixels | None = None
    fit: Fit = "cover"
    position: Position = "centre"
    background: Color = "#ffffff00"
    enlarge: bool = False


class Crop(_Step, tag="crop", frozen=True, kw_only=True):
    """A region: integers are pixels, floats are fractions of the current image."""

    left: Annotated[int, Meta(ge=0, le=PIXEL_LIMIT)] | Fraction = 0
    top: Annotated[int, Meta(ge=0, le=PIXEL_LIMIT)] | Fraction = 0
    width: Pixels | Share
    height: Pixels | Share


class Rotate(_Step, tag="rotate", frozen=True, kw_only=True):
    """Clockwise degrees: multiples of 90 are lossless; other angles expand the canvas."""

    angle: Annotated[float, Meta(ge=-360.0, le=360.0)]
    background: Color = "#ffffff00"


class Flip(_Step, tag="flip", frozen=True, kw_only=True):
    """Mirror top to bottom."""


class Flop(_Step, tag="flop", frozen=True, kw_only=True):
    """Mirror left to right."""


class Blur(_Step, tag="blur", frozen=True, kw_only=True):
    """Gaussian blur of standard deviation ``sigma`` pixels."""

    sigma: Annotated[float, Meta(ge=0.3, le=100.0)]


class Sharpen(_Step, tag="sharpen", frozen=True, kw_only=True):
    """Unsharp mask: ``sigma`` pixels wide, ``amount`` strong."""

    sigma: Annotated[float, Meta(ge=0.5, le=10.0)] = 1.0
    amount: Level = 1.0


class Grayscale(_Step, tag="grayscale", frozen=True, kw_only=True):
    """To grey, keeping alpha."""


class Modulate(_Step, tag="modulate", frozen=True, kw_only=True):
    """Multiply brightness, saturation and contrast (1 leaves each unchanged)."""

    brightness: Level = 1.0
    saturation: Level = 1.0
    contrast: Level = 1.0


class Extend(_Step, tag="extend", frozen=True, kw_only=True):
    """Pad the edges with ``background``."""

    top: Margin = 0
    right: Margin = 0
    bottom: Margin = 0
    left: Margin = 0
    background: Color = "#ffffff00"


class Trim(_Step, tag="trim", frozen=True, kw_only=True):
    """Cut away borders whose pixels are within ``threshold`` of the top-left pixel."""

    threshold: Annotated[int, Meta(ge=0, le=255)] = 10


class Watermark(_Step, tag="watermark", frozen=True, kw_only=True):
    """Overlay the deployment's watermark image (``WATERMARK_PATH``)."""

    opacity: Fraction = 0.5
    position: Compass = "southeast"
    scale: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.2
    margin: Margin = 16


Step = (
    Resize
    | Crop
    | Rotate
    | Flip
    | Flop
    | Blur
    | Sharpen
    | Grayscale
    | Modulate
    | Extend
    | Trim
    | Watermark
)


class Output(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """How the result is encoded; without a format, the seed's rule (JPEG and PNG sources
    keep theirs, others become PNG with alpha, else JPEG). Which options fit which format is
    :func:`imaging.encode.output_problem`'s to say."""

    format: Literal["jpeg", "jpg", "png", "webp", "avif", "gif"] | None = None
    #: Lossy formats only; defaults: jpeg the deployment's ``JPEG_QUALITY`` (85), webp 80, avif 60.
    quality: Annotated[int, Meta(ge=1, le=100)] | None = None
    #: Progressive JPEG (JPEG only).
    progressive: bool = False
    #: webp, avif (avif: quality 100 with full chroma, within a level or two of the source).
    lossless: bool = False
    #: A palette of at most this many colours (libimagequant): png, gif.
    colors: Annotated[int, Meta(ge=2, le=256)] | None = None
    #: Lower the quality (png, gif: the colours) until the output fits, else the job fails
    #: ``max_bytes_unreachable``.
    max_bytes: Annotated[int, Meta(ge=1)] | None = None
    #: ``keep`` the source's ICC profile (when it fits the output), or convert to ``srgb``
    #: and write none.
    icc: Literal["keep", "srgb"] = "keep"
    #: What alpha is flattened onto for formats without alpha (its own alpha is ignored).
    background: Color = "#ffffff"
    #: Add a BlurHash placeholder of the output (4x3 components) to the job view.
    blurhash: bool = False
    #: Keep every frame of an animated GIF/WebP source.
    animated: bool = False


StepList = Annotated[list[Step], Meta(max_length=STEP_LIMIT)]
#: A variant's name: what its download path ends with.
VariantName = Annotated[str, Meta(pattern=r"^[a-z0-9_-]{1,32}$")]


class Variant(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """One output of a job: its steps (on the decoded upload) and its encoding."""

    steps: StepList = msgspec.field(default_factory=list)
    output: Output = msgspec.field(default_factory=Output)


class Document(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """What to make of an upload: top-level ``steps``/``output`` are the variant named
    ``default``; ``variants`` names more (all made from one decode)."""

    steps: StepList | None = None
    output: Output | None = None
    variants: Annotated[dict[VariantName, Variant], Meta(max_length=VARIANT_LIMIT)] | None = None

    def renditions(self) -> dict[str, Variant]:
        """Every variant by name, ``default`` first when there is one."""
        named = dict(self.variants or {})
        if self.steps is not None or self.output is not None or not named:
            default = Variant(steps=self.steps or [], output=self.output or Output())
            if "default" in named:
                raise ValueError("`default` is both the top-level steps and a variant")
            return {"default": default, **named}
        return named


def seed_steps(operation: Literal["resize", "thumbnail"], width: int, height: int) -> list[Step]:
    """The seed service's two operations as steps: an exact size, or fit inside the box."""
    if operation == "resize":
        return [Resize(width=width, height=height, fit="fill", enlarge=True)]
    return [Resize(width=width, height=height, fit="inside")]

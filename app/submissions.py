"""What `POST /jobs` checks before anything is stored: the request's fields (the seed's five,
or a job document), the image's encoding, size and header, and the steps' geometry against
that header. Pure and thread-safe: big bodies are checked off the event loop.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec

import imaging
from app.errors import (
    InvalidBase64,
    InvalidField,
    MalformedJSON,
    PayloadTooLarge,
    UnprocessableImage,
    UnsupportedFormat,
)
from app.models import (
    JobDocument,
    JobKind,
    JobRequest,
    Output,
    OutputFormat,
    PlannedOutput,
    Step,
    SubmitRequest,
    UploadParameters,
    Variant,
)
from app.settings import Settings
from app.ssrf import ForbiddenDestination, check_url
from imaging.document import Resize, Trim, seed_steps
from imaging.encode import MAX_SIDE, output_problem, resolve_format

__all__ = [
    "JobPlan",
    "Order",
    "check_upload",
    "decode_image_data",
    "describe_upload",
    "extension_of",
    "inspect_upload",
    "parse_json",
    "parse_parameters",
]

T = TypeVar("T")

_DATA_URL = re.compile(rb"^data:image/[A-Za-z0-9.+-]+;base64,")
_WHITESPACE = re.compile(rb"\s+")
_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "TIFF": "tif",
    "BMP": "bmp",
    "AVIF": "avif",
    "HEIF": "heic",
}
_SEED_FIELDS = ("operation", "width", "height", "output_format")


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """A checked request, before the image is seen: its outputs by name, each with the path
    its steps are named by in messages (`steps`, `variants.thumb.steps`).

    `width`/`height` are the seed's requested box (the job view shows them).
    """

    operation: JobKind
    variants: dict[str, Variant]
    paths: dict[str, str]
    width: int = 0
    height: int = 0
    callback_url: str | None = None
    metadata: bytes | None = None  # the caller's JSON object, encoded


class JobPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A checked job: the upload's format, the order, and what each variant will produce.

    A job document is stored as `document`: its variants with their formats decided.
    `output_format`, `width` and `height` are what the job's row (and the seed's view)
    show: the seed's request, or the first variant's plan.
    """

    source_format: str
    order: Order
    planned: dict[str, PlannedOutput]
    output_format: OutputFormat
    width: int
    height: int
    document: bytes | None = None


_DOCUMENT_KEYS = (b'"steps"', b'"output"', b'"variants"')


def _is_document(body: bytes) -> bool:
    """True if a JSON body names a job document's members (else it is the seed's body).

    Only the part around the base64 image is searched: base64 has no quote, so the image is
    the span from the quote after `"image_data"` to the next one (a full JSON pass over
    megabytes of image would cost a few ms). A body that fools this is decoded as the seed's
    form and answered with that form's error.
    """
    rest = body
    key = body.find(b'"image_data"')
    if key >= 0:
        start = body.find(b'"', key + len(b'"image_data"'))
        end = body.find(b'"', start + 1) if start >= 0 else -1
        if end > start:
            rest = body[:start] + body[end:]
    return any(name in rest for name in _DOCUMENT_KEYS)


def extension_of(image_format: str) -> str:
    """The file extension stored uploads of `image_format` get."""
    return _EXTENSIONS[image_format]


def _field_message(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    reason, sep, where = text.partition(" - at `$.")
    if sep:
        return f"invalid field `{where.rstrip('`')}`: {reason}"
    return f"invalid request: {text}"


def decode_image_data(text: str, max_bytes: int) -> bytes:
    """Standard base64 (a `data:image/...;base64,` prefix and line breaks allowed)."""
    raw = text.encode("ascii", errors="replace")
    if raw.startswith(b"data:"):
        match = _DATA_URL.match(raw)
        if match is None:
            raise InvalidBase64("image_data: a data URL must look like data:image/<type>;base64,")
        raw = raw[match.end() :]
    if len(raw) // 4 * 3 > max_bytes + 3:
        raise PayloadTooLarge(f"the image exceeds the upload limit of {max_bytes} bytes")
    try:
        data = binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        compact = _WHITESPACE.sub(b"", raw)
        compact += b"=" * (-len(compact) % 4)
        try:
            data = binascii.a2b_base64(compact, strict_mode=True)
        except binascii.Error:
            raise InvalidBase64("image_data is not valid standard base64") from None
    if not data:
        raise InvalidField("image_data is empty")
    check_size(len(data), max_bytes)
    return data


def check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLarge(
            f"the image is {size} bytes, over the upload limit of {max_bytes} bytes"
        )


def inspect_upload(image: bytes | Path, settings: Settings) -> imaging.ImageInfo:
    """Check an upload's header at submit: format allowed, size within the limits."""
    return _read_header(imaging.probe, image, settings)


def describe_upload(image: bytes | Path, settings: Settings) -> imaging.Description:
    """`POST /probe`: what the upload is, with the same checks (and answers) as a submit."""
    size = len(image) if isinstance(image, bytes) else image.stat().st_size
    if size == 0:
        raise InvalidField("the upload is empty; send the image bytes")
    return _read_header(imaging.describe, image, settings)


def _read_header(read: Callable[..., T], image: bytes | Path, settings: Settings) -> T:
    allowed = frozenset(settings.allowed_formats)
    try:
        if isinstance(image, bytes):
            return read(image, allowed=allowed, max_pixels=settings.max_pixels)
        with open(image, "rb") as file:
            return read(file, allowed=allowed, max_pixels=settings.max_pixels)
    except imaging.UnsupportedFormat as exc:
        raise UnsupportedFormat(exc.message) from None
    except imaging.ImagingError as exc:
        raise UnprocessableImage(exc.message, code=exc.code) from None


def check_output_size(settings: Settings, width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if value > settings.max_dimension:
            raise InvalidField(
                f"{name} must be between 1 and {settings.max_dimension}, got {value}"
            )


#: The most `metadata` may take, encoded as JSON.
MAX_METADATA_BYTES = 8192


def _seed_order(request: SubmitRequest | UploadParameters, settings: Settings) -> Order:
    check_output_size(settings, request.width, request.height)
    steps = seed_steps(request.operation, request.width, request.height)
    metadata = request.metadata if isinstance(request, SubmitRequest) else None
    return Order(
        operation=request.operation,
        variants={"default": Variant(steps=steps, output=Output(format=request.output_format))},
        paths={"default": "steps"},
        width=request.width,
        height=request.height,
        callback_url=_callback_url(request.callback_url, settings),
        metadata=_metadata(metadata),
    )


def _callback_url(url: str | None, settings: Settings) -> str | None:
    """A `callback_url` this service may call: http(s), no credentials, not a literal private
    address (a host name is resolved and checked at submit, and again when connecting)."""
    if url is None:
        return None
    if settings.webhook_secret is None:
        raise InvalidField(
            "invalid field `callback_url`: webhooks are off on this server (it has no"
            " WEBHOOK_SECRET to sign them with)"
        )
    try:
        check_url(url, allow_private=settings.webhook_allow_private)
    except ForbiddenDestination as exc:
        raise InvalidField(f"invalid field `callback_url`: {exc}") from None
    return url


def _metadata(metadata: dict[str, object] | None) -> bytes | None:
    if metadata is None:
        return None
    encoded = msgspec.json.encode(metadata)
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidField(
            f"invalid field `metadata`: at most {MAX_METADATA_BYTES} bytes as JSON,"
            f" got {len(encoded)}"
        )
    return encoded


def _document_order(document: JobDocument, settings: Settings) -> Order:
    """Check what the types cannot: the deployment's limits, a resize with a side."""
    try:
        variants = document.renditions()
    except ValueError as exc:
        raise InvalidField(f"invalid field `variants.default`: {exc}") from None
    if len(variants) > settings.max_variants:
        raise InvalidField(
            f"invalid field `variants`: at most {settings.max_variants} variants are allowed"
            f" (MAX_VARIANTS), got {len(variants)}"
        )
    top_level = document.steps is not None or document.output is not None
    paths = {
        name: "steps" if name == "default" and top_level else f"variants.{name}.steps"
        for name in variants
    }
    for name, variant in variants.items():
        _check_steps(variant.steps, paths[name], settings)
    return Order(
        operation="steps",
        variants=variants,
        paths=paths,
        callback_url=_callback_url(document.callback_url, settings),
        metadata=_metadata(document.metadata),
    )


def _check_steps(steps: list[Step], path: str, settings: Settings) -> None:
    if len(steps) > settings.max_steps:
        raise InvalidField(
            f"invalid field `{path}`: at most {settings.max_steps} steps are allowed"
            f" (MAX_STEPS), got {len(steps)}"
        )
    for index, step in enumerate(steps):
        if not isinstance(step, Resize):
            continue
        if step.width is None and step.height is None:
            raise InvalidField(f"invalid field `{path}[{index}]`: a resize needs a width or height")
        for name in ("width", "height"):
            value = getattr(step, name)
            if value is not None and value > settings.max_dimension:
                raise InvalidField(
                    f"invalid field `{path}[{index}].{name}`: must be between 1 and"
                    f" {settings.max_dimension} (MAX_DIMENSION), got {value}"
                )


class _SeedBody(SubmitRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The seed's body with its image decoded by msgspec as it parses (in C, with no string
    copy: a sixth of the cost of a str, then `binascii`). Strict base64 only."""

    image_data: bytes  # type: ignore[assignment]  # the same JSON string, decoded


class _DocumentBody(JobRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A job document's body, its image decoded as it parses (as `_SeedBody`)."""

    image_data: bytes  # type: ignore[assignment]  # the same JSON string, decoded


def parse_json(body: bytes, settings: Settings) -> tuple[Order, bytes]:
    """A JSON body with a base64 image: the seed's five fields, or a job document.

    Plain base64 is decoded while parsing; anything else in `image_data` (a data URL, line
    breaks, missing padding, not a string) is parsed again by the lenient path, which also
    gives the seed's messages."""
    document = _is_document(body)
    try:
        fast = msgspec.json.decode(body, type=_DocumentBody if document else _SeedBody)
    except msgspec.ValidationError as exc:
        if not str(exc).endswith("`$.image_data`"):
            raise InvalidField(_field_message(exc)) from None
        return _parse_lenient(body, settings, document=document)
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    if not fast.image_data:
        raise InvalidField("image_data is empty")
    check_size(len(fast.image_data), settings.max_upload_bytes)
    return _order_of(fast, settings), fast.image_data


def _parse_lenient(body: bytes, settings: Settings, *, document: bool) -> tuple[Order, bytes]:
    kind: type[JobRequest | SubmitRequest] = JobRequest if document else SubmitRequest
    try:
        request = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidField(_field_message(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    return _order_of(request, settings), decode_image_data(
        request.image_data, settings.max_upload_bytes
    )


def _order_of(request: JobRequest | SubmitRequest, settings: Settings) -> Order:
    if isinstance(request, SubmitRequest):
        return _seed_order(request, settings)
    mixed = [name for name in _SEED_FIELDS if getattr(request, name) is not None]
    if mixed:
        raise InvalidField(_mixed_message(mixed))
    return _document_order(request, settings)


def _mixed_message(fields: list[str]) -> str:
    names = ", ".join(f"`{name}`" for name in fields)
    return (
        f"invalid request: {names} belong to the seed's form; a job document describes the"
        ' job with `steps` and `output` (a resize is {"op": "resize", ...})'
    )


def parse_parameters(parameters: Mapping[str, str], settings: Settings) -> Order:
    """The query string (raw body) or form fields (multipart) of a binary upload: the seed's
    flat parameters, or a job document as the JSON `spec` parameter."""
    if "spec" not in parameters:
        try:
            request = msgspec.convert(dict(parameters), UploadParameters, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidField(_field_message(exc)) from None
        return _seed_order(request, settings)
    mixed = [name for name in parameters if name != "spec"]
    if mixed:
        if any(name not in _SEED_FIELDS for name in mixed):
            unknown = next(name for name in mixed if name not in _SEED_FIELDS)
            raise InvalidField(f"invalid request: unknown parameter `{unknown}` beside `spec`")
        raise InvalidField(_mixed_message(mixed))
    try:
        document = msgspec.json.decode(parameters["spec"], type=JobDocument)
    except msgspec.ValidationError as exc:
        raise InvalidField(_field_message(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the `spec` parameter is not valid JSON: {exc}") from None
    return _document_order(document, settings)


# An animated output of an animated source keeps its format unless told otherwise.
_ANIMATED_DEFAULT: dict[str, OutputFormat] = {"GIF": "gif", "WEBP": "webp"}


def _animation_problem(variant: Variant, output_format: OutputFormat) -> str | None:
    """Why `animated` cannot be done as asked; None if it can."""
    output = variant.output
    if not output.animated:
        return None
    if output_format not in ("gif", "webp"):
        return f"`animated` is written as gif or webp, not {output_format}"
    if output.max_bytes is not None:
        return "`max_bytes` does not apply to an animated output"
    for index, step in enumerate(variant.steps):
        if isinstance(step, Trim):
            what = "`trim`"
        elif isinstance(step, Resize) and step.position in ("entropy", "attention"):
            what = f"position `{step.position}`"
        else:
            continue
        return (
            f"`animated`: steps[{index}] uses {what}, which decides from each frame's pixels"
            " and would cut the frames differently"
        )
    return None


def _check_side(plan: imaging.Plan, output_format: str, path: str) -> None:
    most = MAX_SIDE[output_format]
    if max(plan.width, plan.height) > most:
        raise UnprocessableImage(
            f"{path}: the result would be {plan.width}x{plan.height}, and {output_format} images"
            f" can be at most {most:,} pixels wide or high",
            code="output_too_large",
        )


def check_upload(image: bytes | Path, order: Order, settings: Settings) -> JobPlan:
    """Check the image (bytes, or a file already received) and the order against its
    header: 422 for steps that do not fit it (a crop outside, an output too large)."""
    size = len(image) if isinstance(image, bytes) else image.stat().st_size
    if size == 0:
        raise InvalidField("the upload is empty; send the image bytes")
    check_size(size, settings.max_upload_bytes)
    info = inspect_upload(image, settings)
    planned: dict[str, PlannedOutput] = {}
    decided: dict[str, Variant] = {}
    for name, variant in order.variants.items():
        try:
            plan = imaging.plan(
                variant.steps,
                info.displayed,
                max_pixels=settings.max_output_pixels,
                watermark=settings.watermark_path is not None,
                path=order.paths[name],
            )
        except imaging.ImagingError as exc:
            raise UnprocessableImage(exc.message, code=exc.code) from None
        default = _ANIMATED_DEFAULT.get(info.format, info.default_output)
        output_format = resolve_format(
            variant.output, default if variant.output.animated else info.default_output
        )
        problem = output_problem(variant.output, output_format) or _animation_problem(
            variant, output_format
        )
        if problem is not None:
            where = order.paths[name].removesuffix("steps") + "output"
            raise InvalidField(f"invalid field `{where}`: {problem}")
        _check_side(plan, output_format, order.paths[name])
        planned[name] = PlannedOutput(
            format=output_format, width=plan.width, height=plan.height, exact=plan.exact
        )
        output = msgspec.structs.replace(variant.output, format=output_format)
        decided[name] = msgspec.structs.replace(variant, output=output)
    first = planned[next(iter(planned))]
    seed = order.operation != "steps"
    return JobPlan(
        source_format=info.format,
        order=order,
        planned=planned,
        output_format=first.format,
        width=order.width if seed else first.width,
        height=order.height if seed else first.height,
        document=None if seed else msgspec.json.encode(imaging.Document(variants=decided)),
    )

"""What `POST /jobs` checks before anything is stored: the request's fields, the image's
encoding, size and header. Pure and thread-safe: big bodies are checked off the event loop.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

from app.errors import InvalidBase64, InvalidField, MalformedJSON, PayloadTooLarge
from app.models import Operation, OutputFormat, SubmitRequest, UploadParameters
from app.settings import Settings
from app.workers import check_output_size, inspect_upload

__all__ = [
    "JobPlan",
    "check_upload",
    "decode_image_data",
    "extension_of",
    "parse_json",
    "parse_parameters",
]

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
}


class JobPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A checked job: the upload's format and what to make of it."""

    source_format: str
    operation: Operation
    width: int
    height: int
    output_format: OutputFormat


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


def parse_json(body: bytes, settings: Settings) -> tuple[JobPlan, bytes]:
    """The seed service's JSON body with a base64 image: the plan and the image bytes."""
    try:
        request = msgspec.json.decode(body, type=SubmitRequest)
    except msgspec.ValidationError as exc:
        raise InvalidField(_field_message(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    check_output_size(settings, request.width, request.height)
    data = decode_image_data(request.image_data, settings.max_upload_bytes)
    return check_upload(data, request, settings), data


def parse_parameters(parameters: Mapping[str, str], settings: Settings) -> UploadParameters:
    """The query string (raw body) or form fields (multipart) of a binary upload."""
    try:
        request = msgspec.convert(dict(parameters), UploadParameters, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidField(_field_message(exc)) from None
    check_output_size(settings, request.width, request.height)
    return request


def check_upload(
    image: bytes | Path, request: SubmitRequest | UploadParameters, settings: Settings
) -> JobPlan:
    """Check the image (bytes, or a file already received) and make the job's plan."""
    size = len(image) if isinstance(image, bytes) else image.stat().st_size
    if size == 0:
        raise InvalidField("the upload is empty; send the image bytes")
    check_size(size, settings.max_upload_bytes)
    info = inspect_upload(image, settings)
    requested = request.output_format
    output: OutputFormat = (
        info.default_output
        if requested is None
        else ("jpeg" if requested in ("jpeg", "jpg") else "png")
    )
    return JobPlan(
        source_format=info.format,
        operation=request.operation,
        width=request.width,
        height=request.height,
        output_format=output,
    )

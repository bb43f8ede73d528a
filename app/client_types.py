"""The client's side of the wire: the answers it decodes and how, the errors it raises, and
how a job request is encoded (`app.client` makes the calls).

The answers are the client's own msgspec Structs, lenient where the server's wire types
(`app.models`) are strict: no `forbid_unknown_fields`, statuses and formats as plain
strings, a job's `spec` as the JSON object the server sent. A newer server that adds a
member, a step field, a status or a format is still understood; what this client does not
know of is left out. Nothing here imports the server, imaging or Pillow.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TypedDict, TypeVar
from urllib.parse import quote

import anyio
import httpx
import msgspec

if TYPE_CHECKING:  # what a job document may be built from: the server's strict types
    from app.models import Document, Output, Step, Variant

__all__ = [
    "ClientError",
    "Description",
    "DryRun",
    "HTTPError",
    "Health",
    "JobError",
    "JobFailed",
    "JobList",
    "JobOptions",
    "JobView",
    "PlannedOutput",
    "Progress",
    "Submitted",
    "UnexpectedResponse",
    "Unreachable",
    "VariantView",
    "WaitTimedOut",
    "WebhookView",
]

#: The longest URL-encoded `spec` sent in the query string; a longer document goes as the
#: `spec` field of a multipart form. Request lines over 8 KB are refused by common proxies
#: (nginx's default buffers), over 64 KB by httpx itself.
MAX_QUERY_SPEC_BYTES: Final = 4096
CHUNK_BYTES: Final = 256 * 1024
_PARTS: Final = ("document", "steps", "output", "variants")
#: What a job document carries beside what to make: who to tell, and the caller's own data.
_EXTRAS: Final = ("callback_url", "metadata")

#: Called as the upload goes: `(image bytes sent, image bytes in all)`.
Progress = Callable[[int, int], None]
T = TypeVar("T")


# -- Answers -----------------------------------------------------------------------------


class JobError(msgspec.Struct, frozen=True, kw_only=True):
    """Why a job failed: a stable code for programs, a sentence for people."""

    code: str
    message: str = ""


class VariantView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One output of a completed job, and where to download it."""

    format: str
    width: int
    height: int
    bytes: int
    download: str
    blurhash: str | None = None


class WebhookView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The job's webhook delivery: `status` is `pending` until the receiver answers 2xx
    (`delivered`) or the retries run out (`failed`); `last_status` is the last attempt's
    HTTP status or error; `next_attempt_at` is set while a retry is due."""

    status: str
    attempts: int = 0
    last_status: str | None = None
    next_attempt_at: datetime | None = None


class JobView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Body of `GET /jobs/{id}`. `status` is `pending`, `processing`, `completed` or
    `failed`; `operation` is `resize` or `thumbnail` (the seed's forms) or `steps`; `spec`
    is the job document as the server stored it; `reused` is true for a job completed at
    once from an earlier identical job's outputs."""

    id: str
    status: str
    input_path: str
    output_path: str
    operation: str
    width: int
    height: int
    output_format: str
    created_at: datetime
    updated_at: datetime
    error: JobError | None = None
    result_width: int | None = None
    result_height: int | None = None
    result_bytes: int | None = None
    spec: dict[str, Any] | None = None
    variants: dict[str, VariantView] | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    webhook: WebhookView | None = None
    reused: bool = False


class JobList(msgspec.Struct, frozen=True, kw_only=True):
    """Body of `GET /jobs`: jobs newest first; `next_cursor` fetches the next page."""

    jobs: list[JobView]
    next_cursor: str | None = None


class Submitted(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a submit (202): the job's id and `status`, `pending`, or `completed`
    for a job completed at once from an earlier identical job's outputs. `replayed` is true
    when the server answered an earlier request with the same `Idempotency-Key` again (its
    `Idempotent-Replayed` header): no new job was made, `job_id` is that request's job."""

    job_id: str
    status: str = "pending"
    message: str = ""
    replayed: bool = False


class PlannedOutput(msgspec.Struct, frozen=True, kw_only=True):
    """What a job would produce; `exact` is false when a `trim` makes the size depend on
    the pixels (the size is then the most it can be)."""

    format: str
    width: int
    height: int
    exact: bool = True


class DryRun(msgspec.Struct, frozen=True, kw_only=True):
    """Body of `POST /jobs?dry_run=true`: the planned outputs, by variant name."""

    variants: dict[str, PlannedOutput]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """Body of `GET /health`; `status` is `healthy` or `stopping`."""

    status: str
    timestamp: int
    queue_depth: int
    queue_capacity: int
    pool_size: int
    busy_workers: int


class Description(msgspec.Struct, frozen=True, kw_only=True):
    """Body of `POST /probe`: what the server makes of an upload (sizes as displayed)."""

    format: str
    width: int
    height: int
    orientation: int
    mode: str
    frames: int
    animated: bool
    has_alpha: bool
    icc: bool
    bytes: int


# -- Errors ------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error the client raises about a call."""


class HTTPError(ClientError):
    """The server answered with an error status; `code` is its stable machine code.

    `retry_after_s` is the answer's `Retry-After` in seconds (a 429 or 503 says when to try
    again: a busy queue, a rate limit), None without one."""

    def __init__(
        self, status: int, code: str | None, message: str, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {code or 'error'}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class Unreachable(ClientError):
    """No answer from the server (connection refused, DNS, time-out, dropped connection)."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach {url}: {str(cause) or type(cause).__name__}")
        self.url = url


class UnexpectedResponse(ClientError):
    """An answer that is not what the imgjobs API sends."""


class JobFailed(ClientError):
    """The job ended `failed`; `job.error` says why."""

    def __init__(self, job: JobView) -> None:
        error = job.error
        reason = f"{error.code}: {error.message}" if error else "no reason given"
        super().__init__(f"job {job.id} failed ({reason})")
        self.job = job


class WaitTimedOut(ClientError, TimeoutError):
    """The job had not ended when `wait` gave up; `job` is its last view."""

    def __init__(self, job: JobView, timeout_s: float) -> None:
        super().__init__(f"job {job.id} is still {job.status} after {timeout_s:g} s")
        self.job = job


# -- Decoding --------------------------------------------------------------------------


class _Problem(msgspec.Struct, frozen=True):
    """The parts of a problem+json body the client reads; lenient on purpose."""

    code: str | None = None
    error: str | None = None
    detail: str | None = None
    title: str | None = None


def _retry_after_s(value: str | None) -> float | None:
    """`Retry-After` in seconds: delay-seconds, or an HTTP date (RFC 9110 allows both)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def raise_for_status(response: httpx.Response) -> None:
    """Raise `HTTPError` for an error status, with what its problem+json body says."""
    if not response.is_error:
        return
    try:
        problem = msgspec.json.decode(response.content, type=_Problem)
    except (msgspec.DecodeError, msgspec.ValidationError):
        problem = _Problem(error=response.text[:200].strip() or response.reason_phrase)
    message = problem.error or problem.detail or problem.title or response.reason_phrase
    raise HTTPError(
        response.status_code,
        problem.code,
        " ".join(message.split()),
        retry_after_s=_retry_after_s(response.headers.get("Retry-After")),
    )


def decode(response: httpx.Response, kind: type[T]) -> T:
    """The answer as `kind`: `HTTPError` for an error status, `UnexpectedResponse` for
    anything else the API does not send."""
    raise_for_status(response)
    try:
        return msgspec.json.decode(response.content, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UnexpectedResponse(
            f"{response.request.method} {response.request.url.path}: not a {kind.__name__}: {exc}"
        ) from None


def decode_submitted(response: httpx.Response, dry_run: bool) -> Submitted | DryRun:
    """A submit's answer: the plan of a dry run, else the job, `replayed` as the
    `Idempotent-Replayed` header says."""
    if dry_run:
        return decode(response, DryRun)
    submitted = decode(response, Submitted)
    replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
    return msgspec.structs.replace(submitted, replayed=replayed)


# -- Requests ----------------------------------------------------------------------------


class JobOptions(TypedDict, total=False):
    """What a job makes of its upload: a job document (whole, or its parts), or one of the
    seed's operations. Give one form; with none, the image is re-encoded (seed's format rule).
    Mappings are sent as they are, so the server names any bad field by its path."""

    document: Document | Mapping[str, Any]
    steps: Sequence[Step | Mapping[str, Any]]
    output: Output | Mapping[str, Any]
    variants: Mapping[str, Variant | Mapping[str, Any]]
    #: The seed's `resize`: exactly (width, height), the aspect ratio may change.
    resize: tuple[int, int]
    #: The seed's `thumbnail`: fit inside (width, height), never enlarged.
    thumbnail: tuple[int, int]
    #: With `resize` or `thumbnail` only (a document says `output={"format": ...}`).
    output_format: Literal["jpeg", "jpg", "png"]
    #: Where the server POSTs the job's end (a signed webhook); with any form.
    callback_url: str
    #: The caller's own JSON object, kept with the job and shown in its view and webhook;
    #: with a job document only (the seed's parameters have no place for it).
    metadata: Mapping[str, Any]


class Upload(NamedTuple):
    """A request body: the image, between the head and tail of a form when there is one."""

    image: bytes | Path
    size: int
    head: bytes = b""
    tail: bytes = b""
    content_type: str = "application/octet-stream"

    def headers(self) -> dict[str, str]:
        length = len(self.head) + self.size + len(self.tail)
        return {"Content-Type": self.content_type, "Content-Length": str(length)}

    def chunks(self, progress: Progress | None) -> Iterator[bytes]:
        yield self.head
        sent = 0
        for chunk in _read(self.image):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, self.size)
        yield self.tail

    async def achunks(self, progress: Progress | None) -> AsyncIterator[bytes]:
        yield self.head
        sent = 0
        async for chunk in _aread(self.image):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, self.size)
        yield self.tail


def _read(image: bytes | Path) -> Iterator[bytes]:
    if isinstance(image, bytes):
        yield from (image[at : at + CHUNK_BYTES] for at in range(0, len(image), CHUNK_BYTES))
        return
    with image.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk


async def _aread(image: bytes | Path) -> AsyncIterator[bytes]:
    if isinstance(image, bytes):
        for chunk in _read(image):
            yield chunk
        return
    async with await anyio.open_file(image, "rb") as file:
        while chunk := await file.read(CHUNK_BYTES):
            yield chunk


def job_request(
    source: bytes | Path, size: int, options: JobOptions, *, dry_run: bool
) -> tuple[dict[str, str], Upload]:
    """The query parameters and body of `POST /jobs`: the seed's parameters, or the job
    document in `?spec=` or, when too long for a request head, in a multipart form beside
    the image. `callback_url` and `metadata` go into the document (a seed's `callback_url`
    is one of its parameters)."""
    params = {"dry_run": "true"} if dry_run else {}
    seed = [name for name in ("resize", "thumbnail") if name in options]
    parts = [name for name in _PARTS if name in options]
    if len(seed) > 1 or (seed and parts) or ("document" in parts and len(parts) > 1):
        raise ValueError(
            f"give one of: a document, its parts, resize or thumbnail; got {seed + parts}"
        )
    if "output_format" in options and not seed:
        raise ValueError('output_format goes with resize or thumbnail; else output={"format": ...}')
    if seed:
        if "metadata" in options:
            raise ValueError(
                "metadata goes in a job document (document=, steps=, output= or variants=);"
                " the seed's resize and thumbnail have no place for it"
            )
        width, height = options["resize"] if seed == ["resize"] else options["thumbnail"]
        params |= {"operation": seed[0], "width": str(width), "height": str(height)}
        if "output_format" in options:
            params["output_format"] = options["output_format"]
        if "callback_url" in options:
            params["callback_url"] = options["callback_url"]
        return params, Upload(source, size)
    spec = msgspec.json.encode(_document(options))
    if len(quote(spec, safe="")) <= MAX_QUERY_SPEC_BYTES:
        return params | {"spec": spec.decode()}, Upload(source, size)
    boundary = os.urandom(16).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n'.encode()
        + spec
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="image";'
        f' filename="image"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
    )
    tail = f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    return params, Upload(source, size, head, tail, content_type)


def _document(options: JobOptions) -> object:
    """The job document of `options`: as given, or built of its parts and extras."""
    extras = {
        name: dict(value) if isinstance(value, Mapping) else value  # msgspec encodes dicts
        for name, value in options.items()
        if name in _EXTRAS
    }
    if "document" not in options:
        return {name: value for name, value in options.items() if name in _PARTS} | extras
    if not extras:
        return options["document"]
    document = msgspec.to_builtins(options["document"])
    if not isinstance(document, dict):
        raise ValueError(f"a job document is a JSON object, not {type(document).__name__}")
    twice = sorted(name for name in extras if name in document)
    if twice:
        raise ValueError(f"{', '.join(twice)} given both in the document and beside it")
    return document | extras

"""Wire types: what clients send and what the service answers, as msgspec Structs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from imaging.codec import Description
from imaging.codec import OutputFormat as OutputFormat
from imaging.document import Document, Output, Step, Variant

__all__ = [
    "Description",
    "Document",
    "DryRun",
    "Health",
    "JobDocument",
    "JobError",
    "JobList",
    "JobRequest",
    "JobStatus",
    "JobSubmitted",
    "JobView",
    "Operation",
    "Output",
    "OutputFormat",
    "PlannedOutput",
    "PoolResize",
    "PoolView",
    "ProbeRequest",
    "Step",
    "SubmitRequest",
    "UploadParameters",
    "Variant",
    "VariantView",
    "WebhookView",
]

Operation = Literal["resize", "thumbnail"]
#: What a job's row says it does: one of the seed's operations, or a chain of steps.
JobKind = Literal["resize", "thumbnail", "steps"]
JobStatus = Literal["pending", "processing", "completed", "failed"]
Dimension = Annotated[int, Meta(ge=1)]
#: Where the job's webhook goes: http(s), a public address (checked at submit and at connect).
CallbackUrl = Annotated[str, Meta(min_length=1, max_length=2048)]
#: The caller's own data, kept with the job and shown in its view and webhook (at most 8 KiB).
Metadata = Annotated[dict[str, Any], Meta(max_length=64)]
#: `Idempotency-Key`: 1 to 255 characters.
IDEMPOTENCY_KEY_LENGTH = 255


class SubmitRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /jobs`, the seed service's contract (`jpg` accepted for `jpeg`)."""

    image_data: str
    operation: Operation
    width: Dimension
    height: Dimension
    output_format: Literal["jpeg", "jpg", "png"] | None = None
    callback_url: CallbackUrl | None = None
    metadata: Metadata | None = None


class JobDocument(
    Document, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A job document as the service takes it: what to make (imaging's `Document`), and
    who to tell when it is made (`callback_url`) with the caller's own `metadata`."""

    callback_url: CallbackUrl | None = None
    metadata: Metadata | None = None


class JobRequest(JobDocument, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /jobs` as a job document: steps and output, base64 image inside.

    The seed's fields are named here only to answer a mix of both forms with a clear 400.
    """

    image_data: str
    operation: str | None = None
    width: int | None = None
    height: int | None = None
    output_format: str | None = None


class ProbeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /probe` as JSON: just the base64 image."""

    image_data: str


class UploadParameters(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to do with a binary upload: query string (raw body) or form fields (multipart)."""

    operation: Operation
    width: Dimension
    height: Dimension
    output_format: Literal["jpeg", "jpg", "png"] | None = None
    callback_url: CallbackUrl | None = None


class JobSubmitted(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus = "pending"
    message: str = "Image processing job submitted"


class JobError(msgspec.Struct, frozen=True, kw_only=True):
    """Why a job failed: a stable code for programs, a sentence for people."""

    code: str
    message: str


class JobView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Body of `GET /jobs/{id}`. Paths are storage keys, never server paths."""

    id: str
    status: JobStatus
    input_path: str
    output_path: str
    operation: JobKind
    width: int
    height: int
    output_format: OutputFormat
    created_at: datetime
    updated_at: datetime
    error: JobError | None = None
    result_width: int | None = None
    result_height: int | None = None
    result_bytes: int | None = None
    spec: Document | None = None
    variants: dict[str, VariantView] | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    webhook: WebhookView | None = None
    #: Completed at once from an earlier job's outputs (same upload, same document).
    reused: bool = False


class WebhookView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The job's webhook delivery: `pending` until a receiver answers 2xx (`delivered`) or
    the retries run out (`failed`); `last_status` is the last HTTP status or error."""

    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: str | None = None
    next_attempt_at: datetime | None = None


class VariantView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One output of a completed job, and where to download it."""

    format: OutputFormat
    width: int
    height: int
    bytes: int
    download: str
    blurhash: str | None = None


class JobList(msgspec.Struct, frozen=True, kw_only=True):
    """Body of `GET /jobs`: jobs newest first; `next_cursor` fetches the next page."""

    jobs: list[JobView]
    next_cursor: str | None = None


class PlannedOutput(msgspec.Struct, frozen=True, kw_only=True):
    """What a job would produce; `exact` is false when a `trim` makes the size depend on
    the pixels (the size is then the most it can be)."""

    format: OutputFormat
    width: int
    height: int
    exact: bool = True


class DryRun(msgspec.Struct, frozen=True, kw_only=True):
    """Body of `POST /jobs?dry_run=true`: the planned outputs, by variant name."""

    variants: dict[str, PlannedOutput]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["healthy", "stopping"]
    timestamp: int
    queue_depth: int
    queue_capacity: int
    pool_size: int
    busy_workers: int


class PoolResize(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `PUT /admin/pool`."""

    size: Annotated[int, Meta(ge=1, le=256)]


class PoolView(msgspec.Struct, frozen=True, kw_only=True):
    size: int
    busy_workers: int

"""Wire types: what clients send and what the service answers, as msgspec Structs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "Health",
    "JobError",
    "JobStatus",
    "JobSubmitted",
    "JobView",
    "Operation",
    "OutputFormat",
    "PoolResize",
    "PoolView",
    "SubmitRequest",
    "UploadParameters",
]

Operation = Literal["resize", "thumbnail"]
OutputFormat = Literal["jpeg", "png"]
JobStatus = Literal["pending", "processing", "completed", "failed"]
Dimension = Annotated[int, Meta(ge=1)]


class SubmitRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /jobs`, the seed service's contract (`jpg` accepted for `jpeg`)."""

    image_data: str
    operation: Operation
    width: Dimension
    height: Dimension
    output_format: Literal["jpeg", "jpg", "png"] | None = None


class UploadParameters(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to do with a binary upload: query string (raw body) or form fields (multipart)."""

    operation: Operation
    width: Dimension
    height: Dimension
    output_format: Literal["jpeg", "jpg", "png"] | None = None


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
    operation: Operation
    width: int
    height: int
    output_format: OutputFormat
    created_at: datetime
    updated_at: datetime
    error: JobError | None = None
    result_width: int | None = None
    result_height: int | None = None
    result_bytes: int | None = None


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

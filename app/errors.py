"""The service's exception tree and how every error is rendered.

Each class carries its HTTP status, title and a stable machine-readable code; one handler
turns any of them into the same problem-details body (RFC 9457) with an extra `error` member
holding the human message, which is what clients of the original API read::

    ServiceError                500 internal_error (never shows its details)
    ├── BadRequest              400 bad_request
    │   ├── RequestTimeout      408 request_timeout
    │   ├── MalformedJSON       400 malformed_json
    │   ├── InvalidField        400 invalid_field
    │   └── InvalidBase64       400 invalid_base64
    ├── Unauthorized            401 unauthorized
    ├── NotFound                404 not_found
    ├── MethodNotAllowed        405 method_not_allowed
    ├── JobNotReady             409 job_not_ready
    ├── PayloadTooLarge         413 payload_too_large
    ├── UnsupportedMediaType    415 unsupported_media_type
    │   └── UnsupportedFormat   415 unsupported_format
    ├── UnprocessableImage      422 (code of the imaging error: image_too_large, corrupt_image...)
    ├── IdempotencyKeyReused    422 idempotency_key_reused
    ├── RateLimited             429 rate_limited (with Retry-After and RateLimit headers)
    ├── TooManyQueued           429 too_many_queued (with Retry-After)
    ├── QueueFull               503 queue_full (with Retry-After)
    ├── ServiceStopping         503 shutting_down (with Retry-After)
    └── StorageFull             507 storage_full
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = [
    "BadRequest",
    "IdempotencyKeyReused",
    "InvalidBase64",
    "InvalidField",
    "JobNotReady",
    "MalformedJSON",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "Problem",
    "QueueFull",
    "RateLimited",
    "RequestTimeout",
    "ServiceError",
    "ServiceStopping",
    "StorageFull",
    "TooManyQueued",
    "Unauthorized",
    "UnprocessableImage",
    "UnsupportedFormat",
    "UnsupportedMediaType",
]


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The body of every error response (`application/problem+json`)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    error: str
    status_of_job: str | None = msgspec.field(default=None, name="job_status")


class ServiceError(Exception):
    """Base of every error the service answers with; unknown errors become this, opaque."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str = "internal error", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def headers(self) -> dict[str, str]:
        """Extra response headers this error asks for."""
        return {}

    def problem(self) -> Problem:
        return Problem(
            title=self.title,
            status=self.status,
            detail=self.message,
            code=self.code,
            error=self.message,
        )


class BadRequest(ServiceError):
    status = 400
    title = "Bad Request"
    default_code = "bad_request"


class RequestTimeout(BadRequest):
    status = 408
    title = "Request Timeout"
    default_code = "request_timeout"


class MalformedJSON(BadRequest):
    default_code = "malformed_json"


class InvalidField(BadRequest):
    default_code = "invalid_field"


class InvalidBase64(BadRequest):
    default_code = "invalid_base64"


class Unauthorized(ServiceError):
    status = 401
    title = "Unauthorized"
    default_code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="imgjobs"'}


class NotFound(ServiceError):
    status = 404
    title = "Not Found"
    default_code = "not_found"


class WrongNode(ServiceError):
    """A request a node of this role does not serve (API requests sent to a worker node)."""

    status = 421
    title = "Misdirected Request"
    default_code = "wrong_node"


class MethodNotAllowed(ServiceError):
    status = 405
    title = "Method Not Allowed"
    default_code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)} if self.allowed else {}


class JobNotReady(ServiceError):
    status = 409
    title = "Conflict"
    default_code = "job_not_ready"

    def __init__(self, message: str, *, job_status: str) -> None:
        super().__init__(message)
        self.job_status = job_status

    def problem(self) -> Problem:
        return msgspec.structs.replace(super().problem(), status_of_job=self.job_status)


class PayloadTooLarge(ServiceError):
    status = 413
    title = "Content Too Large"
    default_code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    title = "Unsupported Media Type"
    default_code = "unsupported_media_type"


class UnsupportedFormat(UnsupportedMediaType):
    default_code = "unsupported_format"


class UnprocessableImage(ServiceError):
    status = 422
    title = "Unprocessable Content"
    default_code = "unprocessable_image"


class IdempotencyKeyReused(ServiceError):
    """An `Idempotency-Key` already used (within its 24 hours) for another request."""

    status = 422
    title = "Unprocessable Content"
    default_code = "idempotency_key_reused"


class RateLimited(ServiceError):
    """A key's submits came faster than `RATE_LIMIT` allows."""

    status = 429
    title = "Too Many Requests"
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, limits: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limits = limits

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s), **self.limits}


class _RetryLater(ServiceError):
    status = 503
    title = "Service Unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class QueueFull(_RetryLater):
    default_code = "queue_full"


class ServiceStopping(_RetryLater):
    default_code = "shutting_down"


class TooManyQueued(_RetryLater):
    """One API key already has as many jobs waiting as it may (`MAX_QUEUED_PER_KEY`)."""

    status = 429
    title = "Too Many Requests"
    default_code = "too_many_queued"


class StorageFull(ServiceError):
    status = 507
    title = "Insufficient Storage"
    default_code = "storage_full"

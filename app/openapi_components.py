"""The API description's shared parts: parameters, headers, error answers, security schemes,
and the webhook the service sends (routes in `app.openapi` name them)."""

from __future__ import annotations

import re
from typing import Any, Final

from app.access import POLICY
from app.models import IDEMPOTENCY_KEY_LENGTH
from app.routes import MAX_WAIT_S

__all__ = [
    "BINARY",
    "ERRORS",
    "HEADERS",
    "PARAMETERS",
    "SECURITY_SCHEMES",
    "SEED_FIELDS",
    "TEXT",
    "UPLOAD_FIELDS",
    "WEBHOOKS",
    "Schema",
    "ref",
    "upload_field",
]

Schema = dict[str, Any]

BINARY: Final[Schema] = {"type": "string", "format": "binary"}
TEXT: Final[Schema] = {"type": "string"}
#: The seed's upload parameters; a raw body's query or a form's fields, beside `callback_url`.
SEED_FIELDS: Final = ("operation", "width", "height", "output_format")
UPLOAD_FIELDS: Final = (*SEED_FIELDS, "callback_url")


def ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def upload_field(name: str) -> Schema:
    """The schema of one of the upload parameters (a pointer into the generated one)."""
    return {"$ref": f"#/components/schemas/UploadParameters/properties/{name}"}


_CALLBACK = (
    "where to POST the job's end (the `jobEnded` webhook); a 400 unless the server has"
    " WEBHOOK_SECRET, and for an address that is not public"
)

#: Parameters by name (each route lists the names it takes).
PARAMETERS: Final[dict[str, Schema]] = {
    "job_id": {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
    "name": {
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "a variant's name (`default`: the top-level steps, or a seed job's output)",
    },
    "wait": {
        "in": "query",
        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
        "description": "seconds to wait for the job to finish before answering",
    },
    "dry_run": {
        "in": "query",
        "schema": {"type": "boolean", "default": False},
        "description": "check the request against the image and answer what it would make"
        " (200), creating nothing",
    },
    "spec": {
        "in": "query",
        "content": {"application/json": {"schema": ref("JobDocument")}},
        "description": "a raw upload's job document (instead of the seed's parameters):"
        " `steps`, `output` or `variants`, and optionally `callback_url` (a webhook when the"
        " job ends) and `metadata` (the caller's own object, shown in the job's view and"
        " webhook)",
    },
    **{name: {"in": "query", "schema": upload_field(name)} for name in SEED_FIELDS},
    "callback_url": {
        "in": "query",
        "schema": upload_field("callback_url"),
        "description": _CALLBACK,
    },
    "Idempotency-Key": {
        "in": "header",
        "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_LENGTH},
        "description": "printable characters naming this request: a retry with the same key"
        " and the same request within 24 hours answers the first one's 202 again (with"
        " `Idempotent-Replayed: true`) and creates nothing; the same key with another request"
        " is a 422 `idempotency_key_reused`",
    },
    "status": {
        "in": "query",
        "schema": {"enum": ["pending", "processing", "completed", "failed"]},
        "description": "only jobs in this status",
    },
    "limit": {
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
        "description": "jobs per page",
    },
    "cursor": {
        "in": "query",
        "schema": {"type": "string"},
        "description": "the previous page's `next_cursor`",
    },
    "If-None-Match": {"in": "header", "schema": {"type": "string"}},
    "filename": {"in": "path", "required": True, "schema": {"type": "string"}},
    "v": {
        "in": "query",
        "schema": {"type": "string"},
        "description": "the file's version, as the page names it: the current one is cached",
    },
    "asset": {"in": "path", "required": True, "schema": {"type": "string"}},
}

_POLICY = re.escape(f'"{POLICY}"')
#: Response headers by name: schema, description, whether the answers naming it always send it.
HEADERS: Final[dict[str, tuple[Schema, str, bool]]] = {
    "Location": (TEXT, "the job's URL: `/jobs/{job_id}`", True),
    "Retry-After": ({"type": "integer", "minimum": 0}, "seconds to wait before retrying", True),
    "WWW-Authenticate": (TEXT, 'the authentication scheme: `Bearer realm="imgjobs"`', True),
    "Allow": (TEXT, "the methods the path answers", True),
    "ETag": (TEXT, "the output's version, for `If-None-Match`", True),
    "Content-Disposition": (TEXT, '`attachment; filename="<job id>.<ext>"`', True),
    "Cache-Control": (TEXT, "outputs never change: cacheable for a year", False),
    "Idempotent-Replayed": (
        {"type": "string", "enum": ["true"]},
        "this answer is the first one's again: a retry with the same `Idempotency-Key`",
        False,
    ),
    "RateLimit-Policy": (
        {"type": "string", "pattern": f"^{_POLICY};q=[0-9]+;w=[0-9]+$"},
        f'the submit quota (the API key\'s), when the server has RATE_LIMIT: `"{POLICY}";'
        "q=<burst>;w=<seconds to earn it back>` (the IETF RateLimit header fields)",
        False,
    ),
    "RateLimit": (
        {"type": "string", "pattern": f"^{_POLICY};r=[0-9]+;t=[0-9]+$"},
        f'what is left of the quota, when the server has RATE_LIMIT: `"{POLICY}";r=<submits'
        " left>;t=<seconds until it is whole>`",
        False,
    ),
}

#: Every error answer: its name, when it happens, and its headers. The body is a Problem.
ERRORS: Final[dict[int, tuple[str, str, tuple[str, ...]]]] = {
    400: (
        "BadRequest",
        "Malformed JSON, bad base64, a missing, unknown or invalid field or parameter (`detail`"
        " names it by its path, e.g. `steps[1].width`), or a value over a deployment limit.",
        (),
    ),
    401: (
        "Unauthorized",
        "No bearer token, or a wrong one: an API key on `/jobs` and `/probe` (when the server"
        " has API_KEYS), ADMIN_TOKEN on `/admin`, METRICS_TOKEN on `/metrics`.",
        ("WWW-Authenticate",),
    ),
    404: (
        "NotFound",
        "No such job (or a malformed id, or another API key's job), variant, file or route.",
        (),
    ),
    405: ("MethodNotAllowed", "The path does not answer this method.", ("Allow",)),
    408: ("RequestTimeout", "The body did not arrive within BODY_TIMEOUT.", ()),
    409: ("JobNotReady", "The job is not completed; `job_status` says what it is.", ()),
    413: (
        "ContentTooLarge",
        "The body or the decoded image exceeds MAX_UPLOAD_SIZE (refused from `Content-Length`"
        " before the body is read).",
        (),
    ),
    415: (
        "UnsupportedMediaType",
        "Not an image in an allowed format (decided from its first bytes), or a body that is"
        " neither JSON, multipart nor a raw image.",
        (),
    ),
    422: (
        "UnprocessableContent",
        "The image's header is corrupt or over MAX_PIXELS, or the steps do not fit it (a crop"
        " outside the image, a result over MAX_OUTPUT_PIXELS, a watermark without"
        " WATERMARK_PATH); or, on `POST /jobs`, an `Idempotency-Key` used in the last 24 hours"
        " for another request (`idempotency_key_reused`). `code` says which.",
        (),
    ),
    429: (
        "TooManyRequests",
        "Submits faster than RATE_LIMIT allows (`rate_limited`, with the RateLimit headers),"
        " or MAX_QUEUED_PER_KEY jobs already waiting (`too_many_queued`); both count per API"
        " key, or for all callers together on a server without keys. Nothing was created.",
        ("Retry-After", "RateLimit-Policy", "RateLimit"),
    ),
    503: (
        "ServiceUnavailable",
        "The queue is full, or the service is stopping: nothing was created.",
        ("Retry-After",),
    ),
    507: ("InsufficientStorage", "No space left to store the upload.", ()),
    500: ("InternalServerError", "An unexpected error; the details are only in the log.", ()),
}

SECURITY_SCHEMES: Final[dict[str, Schema]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key's secret (`Authorization: Bearer <secret>`), required on"
        " `/jobs` and `/probe` only when the server has API_KEYS or API_KEYS_FILE set;"
        " without them the routes are open and a key sent is ignored. A job belongs to the"
        " key that made it: any other key is answered 404 for it.",
    },
    "adminToken": {"type": "http", "scheme": "bearer", "description": "the ADMIN_TOKEN setting"},
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the METRICS_TOKEN setting",
    },
}

_WEBHOOK = (
    "Sent to the job's `callback_url` once the job has ended, signed as Standard Webhooks"
    " says: `webhook-signature` is `v1,` and the base64 HMAC-SHA256, keyed with the bytes of"
    " the server's WEBHOOK_SECRET (`whsec_<base64>`), of `<webhook-id>.<webhook-timestamp>."
    "<body>`. Any 2xx answer is delivered. Anything else, a redirect (never followed), or no"
    " answer within 10 s is retried with the same body under the same `webhook-id`, across"
    " restarts: first after WEBHOOK_RETRY_BASE_S, then doubling with jitter, at most an hour"
    " apart, for at least 24 hours. The job's view shows the delivery as its `webhook`."
)
_WEBHOOK_HEADERS: Final[tuple[tuple[str, Schema, str], ...]] = (
    (
        "webhook-id",
        {"type": "string", "pattern": "^msg_[A-Za-z0-9_-]+$"},
        "the event's id, the same on every attempt: a receiver drops the ones it has seen",
    ),
    (
        "webhook-timestamp",
        {"type": "integer", "minimum": 0},
        "when this attempt was signed, in Unix seconds: a receiver refuses old ones",
    ),
    (
        "webhook-signature",
        {"type": "string", "pattern": "^v1,[A-Za-z0-9+/]+={0,2}$"},
        "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`",
    ),
)
#: OpenAPI 3.1's top-level `webhooks`: what the service sends, rather than answers.
WEBHOOKS: Final[dict[str, Schema]] = {
    "jobEnded": {
        "post": {
            "operationId": "jobEnded",
            "tags": ["webhooks"],
            "summary": "A job with a `callback_url` has ended: `job.completed` or `job.failed`",
            "description": _WEBHOOK,
            "parameters": [
                {
                    "name": name,
                    "in": "header",
                    "required": True,
                    "schema": schema,
                    "description": text,
                }
                for name, schema, text in _WEBHOOK_HEADERS
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("WebhookEvent")}},
            },
            "responses": {
                "2XX": {"description": "delivered: no further attempt"},
                "default": {"description": "not delivered: retried later"},
            },
        }
    }
}

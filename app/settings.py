"""Service configuration, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from app.keys import ApiKey, KeyListError, parse_keys, read_keys_file
from app.webhooks import Signer

__all__ = ["Settings", "SettingsError", "api_keys", "load_settings"]

PositiveInt = Annotated[int, Meta(ge=1)]
AllowedFormat = Literal["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "MPO", "AVIF", "HEIF"]
DEFAULT_FORMATS: frozenset[AllowedFormat] = frozenset(
    ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "MPO", "AVIF", "HEIF")
)
PositiveFloat = Annotated[float, Meta(gt=0)]


class SettingsError(Exception):
    """A configuration value is missing its form; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the service can be told, with units in the names.

    The first six fields are the seed service's variables with its defaults, except that
    the pool defaults to the number of CPUs instead of 10.
    """

    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    db_path: Path = Path("./data/jobs.db")
    upload_dir: Path = Path("./uploads")
    output_dir: Path = Path("./outputs")
    worker_pool_size: Annotated[int, Meta(ge=1, le=256)] = msgspec.field(
        default_factory=lambda: os.cpu_count() or 1
    )
    max_upload_bytes: PositiveInt = 10 * 1024 * 1024
    host: str = "0.0.0.0"  # noqa: S104 - a service listens on every interface by default
    max_dimension: Annotated[int, Meta(ge=1, le=65535)] = 4096
    queue_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    job_timeout_s: PositiveFloat = 60.0
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 30.0
    jpeg_quality: Annotated[int, Meta(ge=1, le=95)] = 85
    max_pixels: PositiveInt = 50_000_000
    admin_token: str | None = None
    # When set, GET /metrics answers only `Authorization: Bearer <metrics_token>`.
    metrics_token: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    retry_after_s: PositiveInt = 1
    # Formats accepted at submit, by content (never by name). Pillow is never asked to open
    # anything else: EPS would run Ghostscript, PSD/PDF/SVG/ICNS/FPX/JPEG 2000 are out. AVIF and
    # HEIF (iPhone photos) are read by pillow-avif-plugin and pillow-heif.
    allowed_formats: frozenset[AllowedFormat] = DEFAULT_FORMATS
    # Address-space limit of each worker process (RLIMIT_AS), so no image can exhaust the host.
    worker_memory_bytes: Annotated[int, Meta(ge=64 * 1024 * 1024)] = 1024 * 1024 * 1024
    # Finished jobs (rows and files) older than this are removed; 0 keeps them forever.
    job_ttl_s: Annotated[float, Meta(ge=0)] = 24 * 3600.0
    # A request body must arrive within this time (slow clients cannot hold a connection).
    body_timeout_s: PositiveFloat = 60.0
    # At most this many steps in a job document (per variant), and this many variants.
    max_steps: Annotated[int, Meta(ge=1, le=100)] = 10
    max_variants: Annotated[int, Meta(ge=1, le=100)] = 10
    # At most this many frames in an animation that is kept animated (`output.animated`).
    max_frames: Annotated[int, Meta(ge=1, le=10_000)] = 100
    # No step may produce more pixels than this (refused at submit with 422).
    max_output_pixels: PositiveInt = 40_000_000
    # The image the `watermark` step overlays (PNG with alpha, typically); none: no watermarks.
    watermark_path: Path | None = None
    # API keys, `name:secret` pairs, comma-separated (or a file of them, one a line): with
    # either set, /jobs and /probe need `Authorization: Bearer <secret>`; each job is its key's.
    api_keys: str | None = None
    api_keys_file: Path | None = None
    # Per key: submits a second (with a burst of twice that), and jobs waiting at once.
    rate_limit: PositiveFloat | None = None
    max_queued_per_key: PositiveInt | None = None
    # The `whsec_<base64>` secret webhooks are signed with; without it, callback_url is refused.
    webhook_secret: str | None = None
    # Let callback_url name loopback or private addresses (tests, private networks).
    webhook_allow_private: bool = False
    # The first retry of a failed webhook comes after this; then doubling, at most an hour.
    webhook_retry_base_s: PositiveFloat = 5.0
    # Scale-out. `postgresql://user:password@host/db`: jobs, their queue and webhooks in
    # PostgreSQL, shared by every node (DB_PATH is then unused).
    database_url: str | None = None
    # `s3://bucket[/prefix]?endpoint=https://...&region=...`: uploads and outputs in an
    # S3-compatible object store (credentials from the usual AWS_* variables); UPLOAD_DIR
    # then only spools request bodies and worker files.
    storage_url: str | None = None
    # Downloads answer 302 to a presigned URL of the object store instead of streaming it.
    download_redirect: bool = False
    # all: API and workers (one machine); api: requests only, no image work; worker: jobs
    # only (serves /health and /metrics).
    service_role: Literal["all", "api", "worker"] = "all"
    # With DATABASE_URL: a worker node renews its claims every third of this; a dead node's
    # jobs are taken back by the others once it has passed.
    lease_s: Annotated[float, Meta(ge=1, le=3600)] = 30.0


# Environment variable -> field. The seed's six names come first and keep their spelling.
ENVIRONMENT: Mapping[str, str] = {
    "PORT": "port",
    "DB_PATH": "db_path",
    "UPLOAD_DIR": "upload_dir",
    "OUTPUT_DIR": "output_dir",
    "WORKER_POOL_SIZE": "worker_pool_size",
    "MAX_UPLOAD_SIZE": "max_upload_bytes",
    "HOST": "host",
    "MAX_DIMENSION": "max_dimension",
    "QUEUE_SIZE": "queue_size",
    "JOB_TIMEOUT": "job_timeout_s",
    "SHUTDOWN_GRACE": "shutdown_grace_s",
    "JPEG_QUALITY": "jpeg_quality",
    "MAX_PIXELS": "max_pixels",
    "ADMIN_TOKEN": "admin_token",
    "METRICS_TOKEN": "metrics_token",
    "LOG_LEVEL": "log_level",
    "RETRY_AFTER": "retry_after_s",
    "ALLOWED_FORMATS": "allowed_formats",
    "WORKER_MEMORY_LIMIT": "worker_memory_bytes",
    "JOB_TTL": "job_ttl_s",
    "BODY_TIMEOUT": "body_timeout_s",
    "MAX_STEPS": "max_steps",
    "MAX_VARIANTS": "max_variants",
    "MAX_FRAMES": "max_frames",
    "MAX_OUTPUT_PIXELS": "max_output_pixels",
    "WATERMARK_PATH": "watermark_path",
    "API_KEYS": "api_keys",
    "API_KEYS_FILE": "api_keys_file",
    "RATE_LIMIT": "rate_limit",
    "MAX_QUEUED_PER_KEY": "max_queued_per_key",
    "WEBHOOK_SECRET": "webhook_secret",
    "WEBHOOK_ALLOW_PRIVATE": "webhook_allow_private",
    "WEBHOOK_RETRY_BASE_S": "webhook_retry_base_s",
    "DATABASE_URL": "database_url",
    "STORAGE_URL": "storage_url",
    "DOWNLOAD_REDIRECT": "download_redirect",
    "SERVICE_ROLE": "service_role",
    "LEASE_S": "lease_s",
}
# Never echoed in an error message.
_SECRET_FIELDS = frozenset(
    {"api_keys", "webhook_secret", "admin_token", "metrics_token", "database_url"}
)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from environment variables, failing fast on a bad value."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    given: dict[str, str] = {}
    for variable, field in ENVIRONMENT.items():
        value = environ.get(variable)
        if value is None or value.strip() == "":
            continue
        value = given[field] = value.strip()
        if field == "log_level":
            raw[field] = value.upper()
        elif field == "allowed_formats":
            raw[field] = [name.strip().upper() for name in value.split(",") if name.strip()]
        else:
            raw[field] = value
    for variable, field in ENVIRONMENT.items():
        if field not in raw:
            continue
        try:
            msgspec.convert({field: raw[field]}, Settings, strict=False, dec_hook=_decode)
        except msgspec.ValidationError as exc:
            reason = str(exc).split(" - at ", 1)[0]
            shown = "(hidden)" if field in _SECRET_FIELDS else repr(given[field])
            raise SettingsError(f"{variable}={shown} is invalid: {reason}") from None
    settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_decode)
    if settings.watermark_path is not None and not settings.watermark_path.is_file():
        raise SettingsError(f"WATERMARK_PATH={given['watermark_path']!r} is not a file")
    try:
        api_keys(settings)
    except (KeyListError, OSError) as exc:
        variable = "API_KEYS" if settings.api_keys else "API_KEYS_FILE"
        raise SettingsError(f"{variable} is invalid: {exc}") from None
    _check_scale_out(settings)
    if settings.webhook_secret is not None:
        try:
            Signer(settings.webhook_secret)
        except ValueError as exc:
            raise SettingsError(f"WEBHOOK_SECRET is invalid: {exc}") from None
    return settings


def _check_scale_out(settings: Settings) -> None:
    if settings.service_role != "all" and settings.database_url is None:
        raise SettingsError(
            f"SERVICE_ROLE={settings.service_role} needs DATABASE_URL (PostgreSQL): API and"
            " worker nodes share their queue through it"
        )
    if settings.database_url is not None and not settings.database_url.startswith(
        ("postgresql://", "postgres://")
    ):
        raise SettingsError("DATABASE_URL is invalid: it must be a postgresql:// URL")
    if settings.storage_url is not None:
        from app.s3 import parse_storage_url  # boto3 is loaded only when used

        try:
            parse_storage_url(settings.storage_url)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None


def api_keys(settings: Settings) -> list[ApiKey]:
    """The keys of API_KEYS and API_KEYS_FILE (none: the service is open, as the seed's)."""
    entries = settings.api_keys.split(",") if settings.api_keys else []
    if settings.api_keys_file is not None:
        entries += read_keys_file(settings.api_keys_file)
    return parse_keys(entries)


def _decode(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot read {kind.__name__} from the environment")

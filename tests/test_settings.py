"""Configuration from the environment: names, defaults, and errors naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.server import body_limit
from app.settings import ENVIRONMENT, Settings, SettingsError, api_keys, load_settings


def test_defaults_are_the_seed_services_except_the_pool() -> None:
    settings = load_settings({})
    assert settings.port == 8080
    assert settings.db_path == Path("./data/jobs.db")
    assert settings.upload_dir == Path("./uploads")
    assert settings.output_dir == Path("./outputs")
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.worker_pool_size == os.cpu_count()
    assert settings.queue_size == 1000
    assert settings.job_timeout_s == 60
    assert settings.shutdown_grace_s == 30
    assert settings.max_dimension == 4096
    assert settings.admin_token is None
    assert settings.metrics_token is None


def test_every_variable_is_read(tmp_path: Path) -> None:
    watermark = tmp_path / "mark.png"
    watermark.write_bytes(b"any file: it is read by the workers")
    keys_file = tmp_path / "keys"
    keys_file.write_text("# one key a line\ncarol:carol-secret-0123456789\n")
    environ = {
        "PORT": "9000",
        "DB_PATH": "/tmp/x.db",
        "UPLOAD_DIR": "/tmp/u",
        "OUTPUT_DIR": "/tmp/o",
        "WORKER_POOL_SIZE": "3",
        "MAX_UPLOAD_SIZE": "1000",
        "HOST": "127.0.0.1",
        "MAX_DIMENSION": "100",
        "QUEUE_SIZE": "5",
        "JOB_TIMEOUT": "2.5",
        "SHUTDOWN_GRACE": "0",
        "JPEG_QUALITY": "90",
        "MAX_PIXELS": "1000000",
        "ADMIN_TOKEN": "t",
        "METRICS_TOKEN": "m",
        "LOG_LEVEL": "debug",
        "RETRY_AFTER": "7",
        "ALLOWED_FORMATS": "jpeg, PNG",
        "WORKER_MEMORY_LIMIT": "536870912",
        "JOB_TTL": "60",
        "BODY_TIMEOUT": "5",
        "MAX_STEPS": "4",
        "MAX_VARIANTS": "3",
        "MAX_FRAMES": "7",
        "MAX_OUTPUT_PIXELS": "2000000",
        "WATERMARK_PATH": str(watermark),
        "API_KEYS": "alice:alice-secret-0123456789,bob:bob-secret-0123456789",
        "API_KEYS_FILE": str(keys_file),
        "RATE_LIMIT": "2.5",
        "MAX_QUEUED_PER_KEY": "50",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_RETRY_BASE_S": "0.5",
        "DATABASE_URL": "postgresql://imgjobs:pw-0123@db.internal/imgjobs",
        "STORAGE_URL": "s3://photos/jobs?endpoint=http://127.0.0.1:7480",
        "DOWNLOAD_REDIRECT": "true",
        "SERVICE_ROLE": "api",
        "LEASE_S": "12",
    }
    assert set(environ) == set(ENVIRONMENT)
    settings = load_settings(environ)
    assert settings == Settings(
        port=9000,
        db_path=Path("/tmp/x.db"),
        upload_dir=Path("/tmp/u"),
        output_dir=Path("/tmp/o"),
        worker_pool_size=3,
        max_upload_bytes=1000,
        host="127.0.0.1",
        max_dimension=100,
        queue_size=5,
        job_timeout_s=2.5,
        shutdown_grace_s=0,
        jpeg_quality=90,
        max_pixels=1_000_000,
        admin_token="t",
        metrics_token="m",
        log_level="DEBUG",
        retry_after_s=7,
        allowed_formats=frozenset({"JPEG", "PNG"}),
        worker_memory_bytes=536870912,
        job_ttl_s=60,
        body_timeout_s=5,
        max_steps=4,
        max_variants=3,
        max_frames=7,
        max_output_pixels=2_000_000,
        watermark_path=watermark,
        api_keys="alice:alice-secret-0123456789,bob:bob-secret-0123456789",
        api_keys_file=keys_file,
        rate_limit=2.5,
        max_queued_per_key=50,
        webhook_secret=SECRET,
        webhook_allow_private=True,
        webhook_retry_base_s=0.5,
        database_url="postgresql://imgjobs:pw-0123@db.internal/imgjobs",
        storage_url="s3://photos/jobs?endpoint=http://127.0.0.1:7480",
        download_redirect=True,
        service_role="api",
        lease_s=12,
    )
    assert [key.name for key in api_keys(settings)] == ["alice", "bob", "carol"]


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"API_KEYS": "alice"}, "API_KEYS is invalid: key 1 is not name:secret"),
        ({"API_KEYS": "alice:short"}, "API_KEYS is invalid: key 'alice': a secret needs"),
        ({"API_KEYS": "a:0123456789abcdef,a:fedcba9876543210"}, "must be unique"),
        ({"API_KEYS_FILE": "/nonexistent/keys"}, "API_KEYS_FILE is invalid"),
        ({"WEBHOOK_SECRET": "not-base64!"}, "WEBHOOK_SECRET is invalid: a webhook secret is"),
        ({"WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "needs at least 16 bytes"),
        ({"RATE_LIMIT": "0"}, "RATE_LIMIT='0' is invalid"),
    ],
)
def test_bad_keys_and_webhook_settings_fail_fast_without_echoing_secrets(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    assert message in str(caught.value)
    for value in environ.values():
        if "secret" in value or value.startswith("whsec_") or ":" in value:
            assert value not in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SERVICE_ROLE": "worker"}, "SERVICE_ROLE=worker needs DATABASE_URL (PostgreSQL)"),
        ({"SERVICE_ROLE": "api"}, "SERVICE_ROLE=api needs DATABASE_URL (PostgreSQL)"),
        ({"SERVICE_ROLE": "both"}, "SERVICE_ROLE='both' is invalid"),
        ({"DATABASE_URL": "mysql://u:hunter2-pw@db/x"}, "DATABASE_URL is invalid"),
        ({"DATABASE_URL": "postgresql://u:hunter2-pw@db/x", "LEASE_S": "0.1"}, "LEASE_S"),
        ({"STORAGE_URL": "gs://bucket"}, "STORAGE_URL"),
        ({"STORAGE_URL": "s3://"}, "STORAGE_URL"),
    ],
)
def test_bad_scale_out_settings_fail_fast_without_echoing_passwords(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_watermark_path_that_is_not_a_file_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"WATERMARK_PATH=.*is not a file"):
        load_settings({"WATERMARK_PATH": str(tmp_path / "missing.png")})


def test_empty_values_mean_the_default() -> None:
    assert load_settings({"PORT": "", "ADMIN_TOKEN": "  "}).port == 8080


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("PORT", "http", "int"),
        ("PORT", "-1", ">= 0"),
        ("WORKER_POOL_SIZE", "0", ">= 1"),
        ("QUEUE_SIZE", "1.5", "int"),
        ("JOB_TIMEOUT", "0", "> 0"),
        ("MAX_UPLOAD_SIZE", "10MB", "int"),
        ("LOG_LEVEL", "loud", "LOUD"),
        ("JPEG_QUALITY", "100", "<= 95"),
        ("ALLOWED_FORMATS", "jpeg,eps", "EPS"),
        ("WORKER_MEMORY_LIMIT", "1000", ">= 67108864"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    assert str(caught.value).startswith(f"{variable}=")
    assert words in str(caught.value)


def test_the_body_limit_fits_a_base64_image_of_the_upload_limit() -> None:
    settings = Settings(max_upload_bytes=3_000_000)
    assert body_limit(settings) >= 4_000_000 + 1024
    assert body_limit(settings) < 4_000_000 * 1.1


def test_hypercorn_never_cuts_the_longest_long_poll() -> None:
    from app.routes import MAX_WAIT_S
    from app.server import hypercorn_config

    config = hypercorn_config(Settings())
    assert config.read_timeout is not None
    assert config.read_timeout > MAX_WAIT_S
    assert config.include_server_header is False


def test_hypercorn_reads_uploads_in_big_chunks() -> None:
    from hypercorn.trio import tcp_server

    from app.server import RECEIVE_BYTES, create_app

    create_app(Settings())
    assert tcp_server.MAX_RECV == RECEIVE_BYTES

"""Which backends test servers use: the embedded ones (SQLite, local folders), or with
`IMGJOBS_BACKEND=shared` a real PostgreSQL server and a real S3 server (Ceph RGW), started
once for the session, with a fresh database and bucket for every server a test makes.

`make test` runs the API contract suites both ways, so every answer the embedded service
gives is checked on the scaled-out configuration too.
"""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["SHARED", "open_shared_backends", "shared_overrides", "stored_names"]

SHARED = os.environ.get("IMGJOBS_BACKEND", "embedded") == "shared"

_servers: dict[str, Any] = {}
_buckets: dict[Path, str] = {}  # a test server's folder -> its bucket


def open_shared_backends(stack: ExitStack) -> None:
    """Start PostgreSQL and RGW (their stop is pushed on `stack`), and point boto3 at RGW."""
    from tests.pg_server import running_postgres
    from tests.rgw_server import running_rgw

    _servers["postgres"] = stack.enter_context(running_postgres())
    rgw = _servers["rgw"] = stack.enter_context(running_rgw())
    for name, value in {
        "AWS_ACCESS_KEY_ID": rgw.access_key,
        "AWS_SECRET_ACCESS_KEY": rgw.secret_key,
        "AWS_DEFAULT_REGION": rgw.region,
    }.items():
        os.environ[name] = value


def shared_overrides(tmp: Path) -> dict[str, Any]:
    """Settings for the server of folder `tmp` on a fresh database and bucket ({} when
    embedded)."""
    if not SHARED:
        return {}
    assert _servers, "the shared backends start with the session (tests/conftest.py)"
    name = f"t_{uuid.uuid4().hex[:16]}"
    base: str = _servers["postgres"]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # a generated name, never input
    database = base.rsplit("/", 1)[0] + f"/{name}"
    bucket = _buckets[tmp] = f"t-{uuid.uuid4().hex[:16]}"
    return {
        "database_url": database,
        "storage_url": f"s3://{bucket}?endpoint={_servers['rgw'].endpoint}",
    }


def stored_names(tmp: Path, area: str) -> list[str]:
    """The names stored in `area` (uploads, outputs) by the server of folder `tmp`, in its
    folder or in its bucket, sorted; the storage's own dot files left out."""
    if not SHARED:
        return sorted(p.name for p in (tmp / area).iterdir() if not p.name.startswith("."))
    import boto3

    client = boto3.client("s3", endpoint_url=_servers["rgw"].endpoint)
    try:
        listing = client.list_objects_v2(Bucket=_buckets[tmp], Prefix=f"{area}/")
    except client.exceptions.NoSuchBucket:
        return []
    finally:
        client.close()
    return sorted(item["Key"].removeprefix(f"{area}/") for item in listing.get("Contents", []))

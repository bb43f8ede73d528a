"""The store and the blob storage the settings name: SQLite and local folders by default,
PostgreSQL (`DATABASE_URL`) and an S3-compatible object store (`STORAGE_URL`) to scale out.

The only place that knows which backends exist; everything else sees `JobStore`,
`SharedJobStore` and `BlobStorage`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.settings import Settings
from app.storage import BlobStorage, LocalStorage
from app.store import JobDatabase, open_job_store

__all__ = ["open_store", "storage_for"]


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[JobDatabase]:
    """The job database: PostgreSQL with DATABASE_URL (a `SharedJobStore`), else SQLite."""
    if settings.database_url is None:
        async with open_job_store(settings.db_path) as store:
            yield store
        return
    from app.postgres_store import open_postgres_store  # psycopg is loaded only when used

    async with open_postgres_store(settings.database_url) as shared:
        yield shared


def storage_for(settings: Settings) -> BlobStorage:
    """Where uploads and outputs live: the S3 bucket of STORAGE_URL (request bodies and
    worker files spooled under UPLOAD_DIR and OUTPUT_DIR), else those two folders."""
    local = LocalStorage(settings.upload_dir, settings.output_dir)
    if settings.storage_url is None:
        return local
    from app.s3 import S3Storage, parse_storage_url  # boto3 is loaded only when used

    # Threads of its own: S3 calls wait on the network, spool writes on the disk.
    s3: BlobStorage = S3Storage(parse_storage_url(settings.storage_url), local)
    return s3

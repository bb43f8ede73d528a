"""Uploads and outputs in an S3-compatible object store (`STORAGE_URL=s3://bucket/prefix`).

Every node of a scaled-out service sees the same objects; each keeps only a local spool:

- **Spooled bodies.** Request bodies and worker outputs are written to local temporary
  files first (the `LocalStorage` over UPLOAD_DIR and OUTPUT_DIR, used as spool folders),
  then uploaded by `commit`; a worker gets its input downloaded to a spool file
  (`local_file`), since the image code reads files, not streams.
- **Multipart uploads.** `commit` hands the file to boto3's transfer manager: above 8 MiB
  it becomes a multipart upload of 8 MiB parts, four at a time, so a big file is neither
  read into memory nor sent over one slow connection.
- **Presigned downloads.** With DOWNLOAD_REDIRECT, clients are sent to a presigned URL
  (15 minutes, with the attachment filename and media type asked of the store) and fetch
  the bytes from the store itself; otherwise `open` streams them through the service.
- **boto3 in threads.** aioboto3 (aiobotocore, aiohttp) runs on asyncio only and fails
  under trio; boto3's clients are thread-safe, so each blocking call is handed to the
  storage's `Threads`, and sockets have timeouts so that no call holds a thread for long.

Objects are shared by every node: none is ever a leftover of this node alone, so
`leftovers` only reports objects over an hour old, whatever age it is asked for.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

import boto3
import msgspec
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.storage import READ_CHUNK_BYTES, Blob, LocalStorage
from app.threads import Threads

__all__ = ["S3Location", "S3Storage", "StorageError", "parse_storage_url"]

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"
MIB = 1024 * 1024
# Files above this are uploaded in parts of this size, four parts at a time.
MULTIPART_BYTES = 8 * MIB
TRANSFER_THREADS = 4
# Threads for S3 calls when the caller gives none (each call holds one while it waits).
S3_THREADS = 8
PRESIGNED_URL_S = 15 * 60
# Objects younger than this may be another node's work in progress.
OBJECT_LEFTOVER_MIN_AGE_S = 3600.0
DELETE_BATCH = 1000
AREAS = ("uploads", "outputs")
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]*")


class StorageError(OSError):
    """An object store request failed (other than for a missing object): the message
    names the operation and the key, never credentials."""


class S3Location(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the objects live: a bucket, a prefix inside it, and the service's endpoint."""

    bucket: str
    # Object names start with `<prefix>/`; "" puts `uploads/` at the bucket's root.
    prefix: str = ""
    # None is AWS itself; else an S3-compatible service (Ceph RGW, MinIO...).
    endpoint: str | None = None
    region: str = DEFAULT_REGION
    # Path-style (`endpoint/bucket/key`) for other services, which seldom have DNS per bucket.
    addressing_style: Literal["auto", "path"] = "auto"


def parse_storage_url(url: str) -> S3Location:
    """`s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1`; ValueError names
    STORAGE_URL and what is wrong (the URL itself is not echoed: it might hold a secret)."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError("STORAGE_URL must be an s3:// URL: s3://bucket[/prefix]?endpoint=...")
    if "@" in parts.netloc:
        raise ValueError(
            "STORAGE_URL must not hold credentials: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or another source boto3 reads) instead"
        )
    bucket = parts.netloc
    if not bucket:
        raise ValueError("STORAGE_URL names no bucket: s3://bucket[/prefix]")
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"STORAGE_URL names an invalid bucket {bucket!r}: 3 to 63 lowercase letters, "
            "digits, dots and hyphens"
        )
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ValueError(f"STORAGE_URL has an invalid prefix {prefix!r}")
    if parts.fragment:
        raise ValueError("STORAGE_URL must not have a #fragment")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError("STORAGE_URL has a malformed query string") from None
    if unknown := sorted(set(query) - {"endpoint", "region"}):
        raise ValueError(
            f"STORAGE_URL has an unknown parameter {unknown[0]!r} (known: endpoint, region)"
        )
    for name, values in query.items():
        if len(values) > 1:
            raise ValueError(f"STORAGE_URL gives {name} more than once")
        if not values[0]:
            raise ValueError(f"STORAGE_URL gives an empty {name}")
    region = query.get("region", [DEFAULT_REGION])[0]
    if not _REGION.fullmatch(region):
        raise ValueError(f"STORAGE_URL has an invalid region {region!r}")
    endpoint = None
    if "endpoint" in query:
        endpoint = _parse_endpoint(query["endpoint"][0])
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint=endpoint,
        region=region,
        addressing_style="path" if endpoint else "auto",
    )


def _parse_endpoint(value: str) -> str:
    problem = "it must be http(s)://host[:port] with no path"
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port, problem = None, "its port is invalid"
    else:
        if (
            parts.scheme in ("http", "https")
            and parts.hostname
            and "@" not in parts.netloc
            and parts.path in ("", "/")
            and not parts.query
            and not parts.fragment
        ):
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    raise ValueError(f"STORAGE_URL has a bad endpoint: {problem}")


class S3Storage:
    """`BlobStorage` in an S3 bucket, with a local spool for bodies and worker files."""

    def __init__(
        self, location: S3Location, spool: LocalStorage, threads: Threads | None = None
    ) -> None:
        self.location = location
        self._spool = spool
        self._prefix = f"{location.prefix}/" if location.prefix else ""
        #: Where S3 calls run (a pool of this storage's own when none is given).
        self.threads = threads or Threads(S3_THREADS, name="s3")
        self._own_threads = threads is None
        options: dict[str, Any] = {}
        if location.endpoint is not None:
            # Since 1.36 boto3 adds a CRC32 to every upload (over https, as an aws-chunked
            # trailer), which many S3-compatible services refuse (boto/boto3#4392); only
            # send the checksums an operation requires. (Ceph RGW 16 over plain http, as
            # in the tests, accepted either way.)
            options = {
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            }
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": location.addressing_style},
            connect_timeout=10,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=32,
            **options,
        )
        # Credentials: the usual chain (AWS_ACCESS_KEY_ID..., profiles, instance roles).
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=location.endpoint, region_name=location.region, config=config
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES,
            multipart_chunksize=MULTIPART_BYTES,
            max_concurrency=TRANSFER_THREADS,
            preferred_transfer_client="classic",
        )

    def object_name(self, key: str) -> str:
        """The object that holds `key` (ValueError if `key` is not a storage key)."""
        self._spool.path(key)  # the same check, and the same error, as local storage
        return self._prefix + key

    def prepare(self) -> bool:
        """Check the bucket (creating it if it is missing), then create the spool
        folders; True if no other server shares the spool folders."""
        self._prepare_bucket()
        return self._spool.prepare()

    def _prepare_bucket(self) -> None:
        bucket = self.location.bucket
        where = self.location.endpoint or "AWS"
        try:
            self._client.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(
                    f"STORAGE_URL: the bucket {bucket!r} at {where} cannot be used "
                    f"({_describe(exc)}; check the AWS_* credentials and the bucket's policy)"
                ) from None
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageError(
                f"STORAGE_URL: the bucket {bucket!r} at {where} cannot be reached: {exc}"
            ) from None
        options: dict[str, Any] = {}
        if self.location.region != DEFAULT_REGION:
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.location.region}
        try:
            self._client.create_bucket(Bucket=bucket, **options)
        except ClientError as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":  # another node was first
                raise StorageError(
                    f"STORAGE_URL: the bucket {bucket!r} at {where} does not exist and cannot "
                    f"be created ({_describe(exc)}); create it, or allow these credentials to"
                ) from None
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageError(
                f"STORAGE_URL: the bucket {bucket!r} at {where} cannot be created: {exc}"
            ) from None

    def close(self) -> None:
        self._client.close()
        self._spool.close()
        if self._own_threads:
            self.threads.close()
            self._own_threads = False

    def temp_path(self, key: str) -> Path:
        return self._spool.temp_path(key)

    async def receive(
        self,
        temp: Path,
        chunks: AsyncIterable[bytes],
        *,
        limit: int,
        then: Callable[[Path], T],
    ) -> tuple[int, T]:
        return await self._spool.receive(temp, chunks, limit=limit, then=then)

    async def discard(self, temp: Path) -> None:
        await self._spool.discard(temp)

    async def commit(self, temp: Path, key: str) -> None:
        """Upload the temporary file `temp` as `key` (in parts if it is big), then remove
        `temp`, whether the upload worked or not."""
        name = self.object_name(key)
        await self.threads.run(self._upload, temp, name, key)

    def _upload(self, temp: Path, name: str, key: str) -> None:
        try:
            with _translating("upload", key):
                self._client.upload_file(
                    str(temp), self.location.bucket, name, Config=self._transfer
                )
        finally:
            temp.unlink(missing_ok=True)

    async def write(self, key: str, data: bytes) -> None:
        name = self.object_name(key)
        await self.threads.run(self._call, "put", key, "put_object", {"Key": name, "Body": data})

    async def copy(self, source: str, key: str) -> None:
        """Copy `source` to `key` inside the store; FileNotFoundError if it is gone."""
        source_name, name = self.object_name(source), self.object_name(key)
        origin = {"Bucket": self.location.bucket, "Key": source_name}
        await self.threads.run(
            self._call, "copy", source, "copy_object", {"Key": name, "CopySource": origin}
        )

    async def remove(self, *keys: str) -> None:
        """Delete the objects of `keys` (those already gone are fine)."""
        names = [self.object_name(key) for key in keys]
        for start in range(0, len(names), DELETE_BATCH):
            await self.threads.run(self._delete, names[start : start + DELETE_BATCH])

    def _delete(self, names: list[str]) -> None:
        objects = [{"Key": name} for name in names]
        with _translating("delete", names[0]):
            answer = self._client.delete_objects(
                Bucket=self.location.bucket, Delete={"Objects": objects, "Quiet": True}
            )
        failed = [e for e in answer.get("Errors", []) if e.get("Code") not in _MISSING_CODES]
        if failed:
            first = failed[0]
            raise StorageError(
                f"S3 delete of {len(failed)} objects failed, {first.get('Key')!r} first: "
                f"{first.get('Code')} {first.get('Message', '')}".rstrip()
            )

    def _call(self, operation: str, key: str, method: str, params: dict[str, Any]) -> Any:
        with _translating(operation, key):
            return getattr(self._client, method)(Bucket=self.location.bucket, **params)

    @asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        """`key` downloaded to a spool file, for the block; FileNotFoundError if gone."""
        name = self.object_name(key)
        temp = self._spool.temp_path(key)
        try:
            await self.threads.run(self._download, name, key, temp)
            yield temp
        finally:
            temp.unlink(missing_ok=True)  # one system call: not worth a thread

    def _download(self, name: str, key: str, temp: Path) -> None:
        # Into our own temporary file: download_file would write to a name of its own,
        # which the spool's clean-up would not recognise after a crash.
        with open(temp, "xb") as file, _translating("download", key):
            self._client.download_fileobj(self.location.bucket, name, file, Config=self._transfer)

    def local_path(self, key: str) -> Path | None:
        """None: no object is a file of this machine."""
        self.object_name(key)
        return None

    async def open(self, key: str) -> Blob:
        """`key` streamed a mebibyte at a time; FileNotFoundError if it is gone."""
        name = self.object_name(key)
        answer = await self.threads.run(self._call, "get", key, "get_object", {"Key": name})
        return Blob(int(answer["ContentLength"]), _Chunks(self.threads, answer["Body"], key))

    def presigned_url(self, key: str, *, filename: str, media_type: str) -> str:
        """A URL that serves `key` for 15 minutes, as an attachment named `filename` of
        type `media_type` (signed here: no request to the store)."""
        quoted = filename.replace("\\", "_").replace('"', "_")
        params = {
            "Bucket": self.location.bucket,
            "Key": self.object_name(key),
            "ResponseContentDisposition": f'attachment; filename="{quoted}"',
            "ResponseContentType": media_type,
        }
        with _translating("presign", key):
            url: str = self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=PRESIGNED_URL_S
            )
        return url

    async def leftovers(self, *, older_than_s: float) -> tuple[list[Path], dict[str, list[str]]]:
        """The spool's temporary files older than `older_than_s`, and the stored keys of
        objects older than that and at least an hour (other nodes may be writing), by job."""
        temps, _ = await self._spool.leftovers(older_than_s=older_than_s)
        cutoff = time.time() - max(older_than_s, OBJECT_LEFTOVER_MIN_AGE_S)
        return temps, await self.threads.run(self._stored_keys, cutoff)

    def _stored_keys(self, modified_before: float) -> dict[str, list[str]]:
        """Every key whose object was last modified before `modified_before` (a Unix
        time), by job id (the object's name up to its first dot)."""
        keys: dict[str, list[str]] = {}
        pages = self._client.get_paginator("list_objects_v2")
        for area in AREAS:
            with _translating("list", f"{area}/"):
                for page in pages.paginate(
                    Bucket=self.location.bucket, Prefix=f"{self._prefix}{area}/"
                ):
                    for entry in page.get("Contents", []):
                        if entry["LastModified"].timestamp() >= modified_before:
                            continue
                        key = entry["Key"].removeprefix(self._prefix)
                        name = key.partition("/")[2]
                        if "/" in name or name.startswith("."):
                            continue  # not ours: no key names it
                        keys.setdefault(name.partition(".")[0], []).append(key)
        return keys


class _Chunks:
    """An object's body, a mebibyte at a time, each read in a thread; the body is closed
    once read to the end, or by `aclose` (even if never read)."""

    def __init__(self, threads: Threads, body: Any, key: str) -> None:
        self._threads = threads
        self._body: Any = body
        self._key = key

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._body is None:
            raise StopAsyncIteration
        try:
            chunk = await self._threads.run(self._read)
        except BaseException:
            self._close()
            raise
        if not chunk:
            self._close()
            raise StopAsyncIteration
        return chunk

    def _read(self) -> bytes:
        with _translating("read", self._key):
            chunk: bytes = self._body.read(READ_CHUNK_BYTES)
        return chunk

    async def aclose(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._body is not None:
            body, self._body = self._body, None
            body.close()


@contextmanager
def _translating(operation: str, key: str) -> Iterator[None]:
    """A missing object as FileNotFoundError, any other S3 or network failure as
    StorageError naming the operation and the key."""
    try:
        yield
    except ClientError as exc:
        if _code(exc) in _MISSING_CODES:
            raise FileNotFoundError(errno.ENOENT, "no such object", key) from None
        raise StorageError(f"S3 {operation} of {key!r} failed: {_describe(exc)}") from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise StorageError(f"S3 {operation} of {key!r} failed: {exc}") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return " ".join(str(part) for part in (status, error.get("Code"), error.get("Message")) if part)

"""`S3Storage` against a real S3 server (Ceph RGW, started once per session), and
`parse_storage_url`."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from app.s3 import (
    OBJECT_LEFTOVER_MIN_AGE_S,
    S3Location,
    S3Storage,
    StorageError,
    parse_storage_url,
)
from app.storage import LocalStorage
from tests.rgw_server import RgwServer, rgw_server

__all__ = ["rgw_server"]  # the session's S3 server, a fixture of these tests

MIB = 1024 * 1024
PREFIX = "node"


@pytest.fixture
def credentials(rgw_server: RgwServer, monkeypatch: pytest.MonkeyPatch) -> RgwServer:
    """The S3 user's keys in the variables boto3 reads; nothing else of the host's."""
    for variable in list(os.environ):
        if variable.startswith("AWS_"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw_server.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return rgw_server


@pytest.fixture
def location(rgw_server: RgwServer) -> S3Location:
    """A bucket of the test's own (created by `prepare`)."""
    return S3Location(
        bucket=f"imgjobs-{uuid.uuid4().hex[:16]}",
        prefix=PREFIX,
        endpoint=rgw_server.endpoint,
        region=rgw_server.region,
        addressing_style="path",
    )


def make_storage(location: S3Location, root: Path) -> S3Storage:
    return S3Storage(location, LocalStorage(root / "uploads", root / "outputs"))


@pytest.fixture
def storage(location: S3Location, credentials: RgwServer, tmp_path: Path) -> Iterator[S3Storage]:
    storage = make_storage(location, tmp_path)
    try:
        storage.prepare()
        yield storage
    finally:
        storage.close()


@pytest.fixture(scope="session")
def admin(rgw_server: RgwServer) -> Iterator[Any]:
    """A boto3 client of the same user, to look at the bucket behind the storage's back."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=rgw_server.endpoint,
        region_name=rgw_server.region,
        aws_access_key_id=rgw_server.access_key,
        aws_secret_access_key=rgw_server.secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    yield client
    client.close()


def stored(admin: Any, location: S3Location, key: str) -> bytes:
    answer = admin.get_object(Bucket=location.bucket, Key=f"{PREFIX}/{key}")
    with answer["Body"] as body:
        data: bytes = body.read()
    return data


def names(admin: Any, location: S3Location) -> set[str]:
    answer = admin.list_objects_v2(Bucket=location.bucket)
    return {entry["Key"] for entry in answer.get("Contents", [])}


def spooled(root: Path) -> list[Path]:
    return [path for area in ("uploads", "outputs") for path in (root / area).iterdir()]


async def read_all(blob_chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in blob_chunks]


async def test_write_then_open_streams_the_bytes_a_mebibyte_at_a_time(
    storage: S3Storage, admin: Any, location: S3Location
) -> None:
    data = os.urandom(2 * MIB + 5)
    await storage.write("outputs/job1.png", data)
    assert stored(admin, location, "outputs/job1.png") == data
    blob = await storage.open("outputs/job1.png")
    chunks = await read_all(blob.chunks)
    assert blob.size == len(data)
    assert [len(chunk) for chunk in chunks] == [MIB, MIB, 5]
    assert b"".join(chunks) == data


async def test_a_stream_closed_early_ends(storage: S3Storage) -> None:
    await storage.write("outputs/job1.png", os.urandom(3 * MIB))
    blob = await storage.open("outputs/job1.png")
    assert len(await blob.chunks.__anext__()) == MIB
    await blob.chunks.aclose()  # type: ignore[attr-defined]
    assert await read_all(blob.chunks) == []
    unread = await storage.open("outputs/job1.png")
    await unread.chunks.aclose()  # type: ignore[attr-defined]
    assert await read_all(unread.chunks) == []


async def test_commit_uploads_a_small_file_and_removes_it(
    storage: S3Storage, admin: Any, location: S3Location
) -> None:
    temp = storage.temp_path("outputs/job1.webp")
    temp.write_bytes(b"RIFF small")
    await storage.commit(temp, "outputs/job1.webp")
    assert not temp.exists()
    assert stored(admin, location, "outputs/job1.webp") == b"RIFF small"


async def test_commit_uploads_a_large_file_in_parts(
    storage: S3Storage, admin: Any, location: S3Location
) -> None:
    data = os.urandom(20 * MIB)
    temp = storage.temp_path("uploads/job1")
    temp.write_bytes(data)
    await storage.commit(temp, "uploads/job1")
    assert not temp.exists()
    assert stored(admin, location, "uploads/job1") == data
    head = admin.head_object(Bucket=location.bucket, Key=f"{PREFIX}/uploads/job1")
    assert head["ETag"].endswith('-3"')  # a multipart upload's ETag: 3 parts of 8 MiB


async def test_commit_removes_the_file_when_the_upload_fails(
    credentials: RgwServer, rgw_server: RgwServer, tmp_path: Path
) -> None:
    missing = S3Location(
        bucket="imgjobs-never-created", endpoint=rgw_server.endpoint, addressing_style="path"
    )
    storage = make_storage(missing, tmp_path)
    try:
        (tmp_path / "outputs").mkdir()
        temp = storage.temp_path("outputs/job1.png")
        temp.write_bytes(b"png")
        with pytest.raises(StorageError, match=r"outputs/job1\.png") as caught:
            await storage.commit(temp, "outputs/job1.png")
        assert not temp.exists()
        assert rgw_server.secret_key not in str(caught.value)
    finally:
        storage.close()


async def test_receive_spools_then_commit_stores(
    storage: S3Storage, admin: Any, location: S3Location
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"a" * 1000, b"b" * MIB, b"c"):
            yield part

    temp = storage.temp_path("uploads/job1")
    size, seen = await storage.receive(temp, body(), limit=2 * MIB, then=lambda p: p.stat().st_size)
    assert size == seen == 1000 + MIB + 1
    assert temp.parent == storage._spool.path("uploads/job1").parent
    await storage.commit(temp, "uploads/job1")
    assert stored(admin, location, "uploads/job1") == b"a" * 1000 + b"b" * MIB + b"c"
    assert not temp.exists()


async def test_discard_removes_a_spooled_file(storage: S3Storage) -> None:
    temp = storage.temp_path("uploads/job1")
    temp.write_bytes(b"x")
    await storage.discard(temp)
    await storage.discard(temp)  # already gone: fine
    assert not temp.exists()


async def test_copy_is_done_by_the_store(
    storage: S3Storage, admin: Any, location: S3Location
) -> None:
    await storage.write("outputs/job1.png", b"first")
    await storage.copy("outputs/job1.png", "outputs/job2.png")
    assert stored(admin, location, "outputs/job2.png") == b"first"
    with pytest.raises(FileNotFoundError):
        await storage.copy("outputs/gone.png", "outputs/job3.png")
    assert f"{PREFIX}/outputs/job3.png" not in names(admin, location)


async def test_remove_deletes_in_batches_and_ignores_missing_keys(
    storage: S3Storage, admin: Any, location: S3Location
) -> None:
    for name in ("job1.png", "job2.png", "job3.png"):
        await storage.write(f"outputs/{name}", b"x")
    missing = [f"outputs/gone{number}.png" for number in range(1200)]
    # job2 comes in the second batch of 1000.
    await storage.remove("outputs/job1.png", *missing[:1100], "outputs/job2.png", *missing[1100:])
    assert names(admin, location) == {f"{PREFIX}/outputs/job3.png"}
    await storage.remove()


async def test_a_missing_object_is_file_not_found(storage: S3Storage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"outputs/gone\.png"):
        await storage.open("outputs/gone.png")
    with pytest.raises(FileNotFoundError, match="uploads/gone"):
        async with storage.local_file("uploads/gone"):
            pass
    assert spooled(tmp_path) == [tmp_path / "uploads" / ".imgjobs.lock"]


async def test_local_file_is_a_spooled_copy_removed_after(
    storage: S3Storage, tmp_path: Path
) -> None:
    data = os.urandom(9 * MIB)  # downloaded in parts
    await storage.write("uploads/job1", data)
    assert storage.local_path("uploads/job1") is None
    async with storage.local_file("uploads/job1") as path:
        assert path.parent == tmp_path / "uploads"
        assert path.read_bytes() == data
    assert not path.exists()
    assert spooled(tmp_path) == [tmp_path / "uploads" / ".imgjobs.lock"]


async def test_presigned_url_serves_the_object_as_asked(storage: S3Storage) -> None:
    await storage.write("outputs/job1.webp", b"RIFF webp bytes")
    url = storage.presigned_url("outputs/job1.webp", filename="job1.webp", media_type="image/webp")
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
        assert answer.status_code == 200
        assert answer.content == b"RIFF webp bytes"
        assert answer.headers["content-type"] == "image/webp"
        assert answer.headers["content-disposition"] == 'attachment; filename="job1.webp"'
        other = url.replace("outputs/job1.webp", "outputs/job2.webp")
        await storage.write("outputs/job2.webp", b"another")
        assert (await client.get(other)).status_code == 403
        signature = url.partition("X-Amz-Signature=")[2][:64]
        forged = url.replace(signature, signature[::-1])
        assert (await client.get(forged)).status_code == 403
        unsigned = url.partition("?")[0]
        assert (await client.get(unsigned)).status_code == 403


async def test_leftovers_are_old_objects_by_job_and_old_spool_files(
    storage: S3Storage, admin: Any, location: S3Location, tmp_path: Path
) -> None:
    for key in ("uploads/job1", "outputs/job1.png", "outputs/job1.small.webp", "outputs/job2"):
        await storage.write(key, b"x")
    # Not the service's: no key names them.
    admin.put_object(Bucket=location.bucket, Key=f"{PREFIX}/outputs/sub/job3.png", Body=b"")
    admin.put_object(Bucket=location.bucket, Key=f"{PREFIX}/outputs/.job4.png", Body=b"")
    admin.put_object(Bucket=location.bucket, Key="elsewhere/outputs/job5.png", Body=b"")
    temp = storage.temp_path("outputs/job6.png")
    temp.write_bytes(b"half")

    found = await storage.threads.run(storage._stored_keys, time.time() + 60)
    assert {job: sorted(keys) for job, keys in found.items()} == {
        "job1": ["outputs/job1.png", "outputs/job1.small.webp", "uploads/job1"],
        "job2": ["outputs/job2"],
    }
    assert await storage.threads.run(storage._stored_keys, time.time() - 60) == {}
    # Fresh objects may be another node's work: never leftovers, however young asked.
    temps, keys = await storage.leftovers(older_than_s=0)
    assert temps == [temp]
    assert keys == {}
    temps, keys = await storage.leftovers(older_than_s=OBJECT_LEFTOVER_MIN_AGE_S)
    assert temps == []


@pytest.mark.parametrize(
    "key",
    ["etc/passwd", "uploads/", "uploads/../x", "uploads/a/b", "uploads/.lock", "outputs", ""],
)
async def test_bad_keys_are_refused(storage: S3Storage, key: str) -> None:
    with pytest.raises(ValueError, match="not a storage key"):
        await storage.write(key, b"x")
    with pytest.raises(ValueError, match="not a storage key"):
        await storage.open(key)
    with pytest.raises(ValueError, match="not a storage key"):
        await storage.copy(key, "outputs/job1.png")
    with pytest.raises(ValueError, match="not a storage key"):
        await storage.remove("outputs/job1.png", key)
    with pytest.raises(ValueError, match="not a storage key"):
        async with storage.local_file(key):
            pass
    with pytest.raises(ValueError, match="not a storage key"):
        storage.presigned_url(key, filename="x", media_type="image/png")
    with pytest.raises(ValueError, match="not a storage key"):
        storage.temp_path(key)


async def test_prepare_creates_a_missing_bucket(
    location: S3Location, credentials: RgwServer, admin: Any, tmp_path: Path
) -> None:
    assert location.bucket not in {b["Name"] for b in admin.list_buckets()["Buckets"]}
    storage = make_storage(location, tmp_path)
    try:
        assert storage.prepare() is True
        admin.head_bucket(Bucket=location.bucket)
        assert (tmp_path / "uploads").is_dir()
        assert (tmp_path / "outputs").is_dir()
    finally:
        storage.close()
    again = make_storage(location, tmp_path)
    try:
        assert again.prepare() is True  # the bucket is there
    finally:
        again.close()


async def test_prepare_names_the_bucket_when_refused(
    location: S3Location, credentials: RgwServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = make_storage(location, tmp_path)
    try:
        with pytest.raises(StorageError, match=f"STORAGE_URL.*{location.bucket}") as caught:
            storage.prepare()
        assert "not-the-secret" not in str(caught.value)
        assert not (tmp_path / "uploads").exists()
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://photos", S3Location(bucket="photos")),
        (
            "s3://photos/imgjobs/prod/?region=eu-west-3",
            S3Location(bucket="photos", prefix="imgjobs/prod", region="eu-west-3"),
        ),
        (
            "s3://my.bucket-1?endpoint=http://127.0.0.1:7480&region=us-east-1",
            S3Location(
                bucket="my.bucket-1", endpoint="http://127.0.0.1:7480", addressing_style="path"
            ),
        ),
        (
            "s3://b12/p?endpoint=https://S3.Example.com/",
            S3Location(
                bucket="b12",
                prefix="p",
                endpoint="https://s3.example.com",
                addressing_style="path",
            ),
        ),
    ],
)
def test_parse_storage_url(url: str, expected: S3Location) -> None:
    assert parse_storage_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://bucket", "s3://"),
        ("/var/lib/imgjobs", "s3://"),
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://Bad_Bucket", "invalid bucket"),
        ("s3://bucket:9000", "invalid bucket"),
        ("s3://key:secret@bucket", "credentials"),
        ("s3://bucket/a//b", "invalid prefix"),
        ("s3://bucket/../b", "invalid prefix"),
        ("s3://bucket?endpoint=http://h&secure=1", "unknown parameter 'secure'"),
        ("s3://bucket?endpoint=http://h&endpoint=http://i", "more than once"),
        ("s3://bucket?region=", "empty region"),
        ("s3://bucket?region=EU%20West", "invalid region"),
        ("s3://bucket?endpoint=ftp://host", "bad endpoint"),
        ("s3://bucket?endpoint=host:9000", "bad endpoint"),
        ("s3://bucket?endpoint=http://host:99999", "bad endpoint: its port"),
        ("s3://bucket?endpoint=http://host/path", "bad endpoint"),
        ("s3://bucket?endpoint=http://u:p@host", "bad endpoint"),
        ("s3://bucket#frag", "fragment"),
    ],
)
def test_parse_storage_url_refuses(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="STORAGE_URL") as caught:
        parse_storage_url(url)
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)

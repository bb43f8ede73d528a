"""Input and output files under UPLOAD_DIR and OUTPUT_DIR, addressed by storage keys.

A key is `uploads/<name>` or `outputs/<name>`: what clients see instead of server paths.
Every write lands in a temporary file first and is renamed into place, so a crash leaves
either the whole file or a `.tmp` leftover that start-up removes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import msgspec

from app.errors import PayloadTooLarge, StorageFull
from app.threads import Threads

__all__ = ["TEMP_SUFFIX", "Blob", "BlobStorage", "LocalStorage"]

T = TypeVar("T")

TEMP_SUFFIX = ".tmp"
WRITE_BUFFER_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
# Threads for file operations: writes of different uploads and outputs overlap.
FILE_THREADS = 4
LOCK_NAME = ".imgjobs.lock"


class Blob(msgspec.Struct, frozen=True):
    """A stored file being read: its size and its bytes, a chunk at a time."""

    size: int
    chunks: AsyncIterator[bytes]


class BlobStorage(Protocol):
    """Where job inputs and outputs live, by key (`uploads/<name>`, `outputs/<name>`).

    Request bodies and worker outputs are written to local temporary files first (the
    spool: `temp_path`, `receive`), then stored under their key (`commit`); a worker reads
    its input from a local file (`local_file`).
    """

    #: Threads for blocking work (file and network I/O, parsing big bodies).
    threads: Threads

    def prepare(self) -> bool:
        """Create what is missing; True if no other server shares the storage."""
        ...

    def close(self) -> None: ...
    def temp_path(self, key: str) -> Path:
        """A fresh local temporary file name for what will be stored under `key`."""
        ...

    async def receive(
        self,
        temp: Path,
        chunks: AsyncIterable[bytes],
        *,
        limit: int,
        then: Callable[[Path], T],
    ) -> tuple[int, T]: ...
    async def write(self, key: str, data: bytes) -> None: ...
    async def commit(self, temp: Path, key: str) -> None:
        """Store the temporary file `temp` under `key` (and remove `temp`)."""
        ...

    async def copy(self, source: str, key: str) -> None:
        """Store what `source` holds under `key` too; FileNotFoundError if it is gone."""
        ...

    async def remove(self, *keys: str) -> None: ...
    async def discard(self, temp: Path) -> None: ...
    def local_file(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A local file holding what `key` holds, for the block; FileNotFoundError if gone."""
        ...

    def local_path(self, key: str) -> Path | None:
        """Where `key` is on this machine's file system, if it is there (downloads are
        then sent from the file); None for remote storage."""
        ...

    async def open(self, key: str) -> Blob:
        """What `key` holds, streamed; FileNotFoundError if it is gone."""
        ...

    def presigned_url(self, key: str, *, filename: str, media_type: str) -> str | None:
        """A URL that serves `key` for a while without credentials; None if the storage
        has none (local folders)."""
        ...

    async def leftovers(self, *, older_than_s: float) -> tuple[list[Path], dict[str, list[str]]]:
        """Temporary files, and every stored key by job id, last changed before the age."""
        ...


class LocalStorage:
    """`BlobStorage` on two local folders."""

    def __init__(self, upload_dir: Path, output_dir: Path, threads: Threads | None = None) -> None:
        self._roots = {"uploads": upload_dir.resolve(), "outputs": output_dir.resolve()}
        self._lock: BinaryIO | None = None
        #: Where file operations run (a pool of this storage's own when none is given).
        self.threads = threads or Threads(FILE_THREADS, name="files")
        self._own_threads = threads is None

    def prepare(self) -> bool:
        """Create the folders and take the storage lock; True if no other server shares it.

        Every server holds a shared `flock` on the storage while it runs. One that gets it
        exclusively at start-up is alone, so every temporary or orphan file is a crash's
        leftover; otherwise only old ones are (another server may be writing right now).
        """
        for root in self._roots.values():
            root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self._roots["uploads"] / LOCK_NAME, "a+b")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            alone = False
        else:
            alone = True
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        return alone

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._own_threads:
            self.threads.close()
            self._own_threads = False

    async def leftovers(self, *, older_than_s: float) -> tuple[list[Path], dict[str, list[str]]]:
        return await self.threads.run(self._leftovers, older_than_s)

    def _leftovers(self, older_than_s: float) -> tuple[list[Path], dict[str, list[str]]]:
        cutoff = time.time() - older_than_s
        temps: list[Path] = []
        keys: dict[str, list[str]] = {}
        for area, root in self._roots.items():
            for entry in os.scandir(root):
                if not entry.is_file() or entry.stat().st_mtime > cutoff:
                    continue
                if entry.name.endswith(TEMP_SUFFIX) and entry.name.startswith("."):
                    temps.append(Path(entry.path))
                elif not entry.name.startswith("."):
                    job_id = entry.name.partition(".")[0]
                    keys.setdefault(job_id, []).append(f"{area}/{entry.name}")
        return temps, keys

    def path(self, key: str) -> Path:
        area, _, name = key.partition("/")
        if area not in self._roots or not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a storage key: {key!r}")
        return self._roots[area] / name

    def local_path(self, key: str) -> Path:
        return self.path(key)

    @asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        path = self.path(key)
        if not await self.threads.run(path.is_file):
            raise FileNotFoundError(key)
        yield path

    async def open(self, key: str) -> Blob:
        file = await self.threads.run(open, self.path(key), "rb")
        try:
            size = os.fstat(file.fileno()).st_size
        except BaseException:
            file.close()
            raise
        return Blob(size, _read_chunks(self.threads, file))

    def presigned_url(self, key: str, *, filename: str, media_type: str) -> None:
        return None

    def temp_path(self, key: str) -> Path:
        final = self.path(key)
        return final.with_name(f".{final.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")

    async def write(self, key: str, data: bytes) -> None:
        temp = self.temp_path(key)
        await self.threads.run(_write_atomic, temp, self.path(key), data)

    async def commit(self, temp: Path, key: str) -> None:
        await self.threads.run(os.replace, temp, self.path(key))

    async def copy(self, source: str, key: str) -> None:
        """Store what `source` holds under `key` too (a hard link where the file system
        allows, so reused outputs cost no space); FileNotFoundError if it is gone."""
        await self.threads.run(_copy_atomic, self.path(source), self.temp_path(key), self.path(key))

    async def remove(self, *keys: str) -> None:
        paths = [self.path(key) for key in keys]
        await self.threads.run(_unlink_all, paths)

    async def receive(
        self,
        temp: Path,
        chunks: AsyncIterable[bytes],
        *,
        limit: int,
        then: Callable[[Path], T],
    ) -> tuple[int, T]:
        """Write `chunks` to `temp` as they arrive, then call `then(temp)`; returns the
        size and what `then` returned.

        Chunks are written a mebibyte at a time, each write one hop to a thread; the last
        write, closing the file and `then` share one hop, so a small upload costs a single
        hop. Raises `PayloadTooLarge` as soon as more than `limit` bytes came.
        """
        size = 0
        pending: list[bytes] = []
        pending_size = 0
        file: BinaryIO | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the image exceeds the upload limit of {limit} bytes")
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= WRITE_BUFFER_BYTES:
                    file = await self.threads.run(_append, file, temp, pending)
                    pending = []
                    pending_size = 0
            result = await self.threads.run(_finish, file, temp, pending, then)
            file = None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("no space left to store the upload; retry later") from None
            raise
        finally:
            if file is not None:
                file.close()
        return size, result

    async def discard(self, temp: Path) -> None:
        """Remove a temporary file if it is still there (a failed or cancelled job's)."""
        await self.threads.run(_unlink_all, [temp])


async def _read_chunks(threads: Threads, file: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await threads.run(file.read, READ_CHUNK_BYTES):
            yield chunk
    finally:
        file.close()


def _write_atomic(temp: Path, final: Path, data: bytes) -> None:
    try:
        with open(temp, "xb") as file:
            file.write(data)
        os.replace(temp, final)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull("no space left to store the upload; retry later") from None
        raise


def _copy_atomic(source: Path, temp: Path, final: Path) -> None:
    try:
        os.link(source, temp)
    except FileNotFoundError:
        raise
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, temp)
    try:
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _append(file: BinaryIO | None, temp: Path, chunks: list[bytes]) -> BinaryIO:
    if file is None:
        file = open(temp, "xb")  # noqa: SIM115 - closed by _finish or receive
    try:
        file.writelines(chunks)
    except BaseException:
        file.close()
        raise
    return file


def _finish(file: BinaryIO | None, temp: Path, chunks: list[bytes], then: Callable[[Path], T]) -> T:
    with _append(file, temp, chunks):
        pass
    return then(temp)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)

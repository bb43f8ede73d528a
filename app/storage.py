"""Input and output files under UPLOAD_DIR and OUTPUT_DIR, addressed by storage keys.

A key is `uploads/<name>` or `outputs/<name>`: what clients see instead of server paths.
Every write lands in a temporary file first and is renamed into place, so a crash leaves
either the whole file or a `.tmp` leftover that start-up removes.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Protocol

import trio

from app.errors import StorageFull

__all__ = ["TEMP_SUFFIX", "BlobStorage", "LocalStorage"]

TEMP_SUFFIX = ".tmp"


class BlobStorage(Protocol):
    """Where job inputs and outputs live."""

    def path(self, key: str) -> Path: ...
    def temp_path(self, key: str) -> Path: ...
    async def write(self, key: str, data: bytes) -> None: ...
    async def commit(self, temp: Path, key: str) -> None: ...
    async def remove(self, *keys: str) -> None: ...
    async def discard(self, temp: Path) -> None: ...


class LocalStorage:
    """`BlobStorage` on two local folders."""

    def __init__(self, upload_dir: Path, output_dir: Path) -> None:
        self._roots = {"uploads": upload_dir.resolve(), "outputs": output_dir.resolve()}

    def prepare(self) -> list[Path]:
        """Create the folders and remove temporary files a crash left; returns those."""
        removed: list[Path] = []
        for root in self._roots.values():
            root.mkdir(parents=True, exist_ok=True)
            for leftover in root.glob(f".*{TEMP_SUFFIX}"):
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
        return removed

    def path(self, key: str) -> Path:
        area, _, name = key.partition("/")
        if area not in self._roots or not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a storage key: {key!r}")
        return self._roots[area] / name

    def temp_path(self, key: str) -> Path:
        final = self.path(key)
        return final.with_name(f".{final.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")

    async def write(self, key: str, data: bytes) -> None:
        temp = self.temp_path(key)
        await trio.to_thread.run_sync(_write_atomic, temp, self.path(key), data)

    async def commit(self, temp: Path, key: str) -> None:
        await trio.to_thread.run_sync(os.replace, temp, self.path(key))

    async def remove(self, *keys: str) -> None:
        paths = [self.path(key) for key in keys]
        await trio.to_thread.run_sync(_unlink_all, paths)

    async def discard(self, temp: Path) -> None:
        """Remove a temporary file if it is still there (a failed or cancelled job's)."""
        await trio.to_thread.run_sync(_unlink_all, [temp])


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


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)

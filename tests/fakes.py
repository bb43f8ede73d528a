"""Trio-native fakes of the store, the storage and the process runner, for virtual time."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple, Unpack

import msgspec
import trio

import imaging
from app.models import JobStatus
from app.store import JobRecord
from imaging.document import Resize

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def record(job_id: str, **changes: Any) -> JobRecord:
    now = time.time()
    base = JobRecord(
        id=job_id,
        status="pending",
        operation="resize",
        width=10,
        height=10,
        output_format="png",
        input_key=f"uploads/{job_id}.png",
        output_key=f"outputs/{job_id}.png",
        input_bytes=1,
        created_at=now,
        updated_at=now,
    )
    return msgspec.structs.replace(base, **changes)


class FakeStore:
    """An in-memory `JobStore` with the same compare-and-set rules as SQLite's."""

    def __init__(self) -> None:
        self.rows: dict[str, JobRecord] = {}

    def _set(self, job_id: str, **changes: Any) -> None:
        self.rows[job_id] = msgspec.structs.replace(
            self.rows[job_id], updated_at=time.time(), **changes
        )

    async def insert(
        self, record: JobRecord, *, replay_since: float | None = None
    ) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        assert record.id not in self.rows
        if record.idempotency_key is not None:
            earlier = self._replayable(record.owner, record.idempotency_key, replay_since or 0.0)
            if earlier is not None:
                return earlier
        self.rows[record.id] = record
        return None

    def _replayable(self, owner: str | None, key: str, since: float) -> JobRecord | None:
        return next(
            (
                r
                for r in self.rows.values()
                if r.owner == owner and r.idempotency_key == key and r.created_at >= since
            ),
            None,
        )

    async def replayable(
        self, *, owner: str | None, idempotency_key: str, since: float
    ) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        return self._replayable(owner, idempotency_key, since)

    async def reusable(
        self, *, owner: str | None, input_sha256: bytes, spec: bytes
    ) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        done = [
            r
            for r in self.rows.values()
            if r.status == "completed"
            and (r.owner, r.input_sha256, r.spec) == (owner, input_sha256, spec)
        ]
        return max(done, key=lambda r: r.finished_at or 0.0, default=None)

    async def get(self, job_id: str) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        return self.rows.get(job_id)

    async def delete(self, job_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self.rows.pop(job_id, None) is not None

    async def claim(self, job_id: str, *, owner: str, lease_s: float) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        row = self.rows.get(job_id)
        if row is None or row.status != "pending":
            return None
        self._set(
            job_id,
            status="processing",
            claimed_by=owner,
            attempts=row.attempts + 1,
            lease_expires_at=time.time() + lease_s,
        )
        return self.rows[job_id]

    async def complete(
        self,
        job_id: str,
        *,
        owner: str,
        width: int,
        height: int,
        size_bytes: int,
        results: bytes | None = None,
    ) -> bool:
        await trio.lowlevel.checkpoint()
        row = self.rows.get(job_id)
        if row is None or row.status != "processing" or row.claimed_by != owner:
            return False
        self._set(
            job_id,
            status="completed",
            result_width=width,
            result_height=height,
            result_bytes=size_bytes,
            results=results,
        )
        return True

    async def fail(self, job_id: str, *, code: str, message: str, owner: str | None = None) -> bool:
        await trio.lowlevel.checkpoint()
        row = self.rows.get(job_id)
        if row is None or row.status not in ("pending", "processing"):
            return False
        if owner is not None and (row.status != "processing" or row.claimed_by != owner):
            return False
        self._set(job_id, status="failed", error_code=code, error_message=message)
        return True

    async def release(self, job_id: str, *, owner: str) -> bool:
        await trio.lowlevel.checkpoint()
        row = self.rows.get(job_id)
        if row is None or row.status != "processing" or row.claimed_by != owner:
            return False
        self._set(job_id, status="pending", claimed_by=None, lease_expires_at=None)
        return True

    async def runnable(self, *, limit: int, exclude: Iterable[str]) -> list[tuple[str, str | None]]:
        await trio.lowlevel.checkpoint()
        skip = set(exclude)
        ids = [
            (r.id, r.owner)
            for r in sorted(self.rows.values(), key=lambda r: r.created_at)
            if r.status == "pending" and r.id not in skip
        ]
        return ids[:limit]

    async def owners(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(
            {r.claimed_by for r in self.rows.values() if r.status == "processing" and r.claimed_by}
        )

    async def release_owner(self, owner: str) -> int:
        await trio.lowlevel.checkpoint()
        mine = [
            r.id for r in self.rows.values() if r.status == "processing" and r.claimed_by == owner
        ]
        for job_id in mine:
            self._set(job_id, status="pending", claimed_by=None, lease_expires_at=None)
        return len(mine)

    async def fail_exhausted(self, *, max_attempts: int, message: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        ids = [
            r.id for r in self.rows.values() if r.status == "pending" and r.attempts >= max_attempts
        ]
        for job_id in ids:
            self._set(job_id, status="failed", error_code="interrupted", error_message=message)
        return ids

    async def count(self, status: str | None = None) -> int:
        await trio.lowlevel.checkpoint()
        return sum(status in (None, r.status) for r in self.rows.values())

    async def integrity_check(self) -> str:
        return "ok"

    async def expired(self, *, finished_before: float, limit: int) -> list[JobRecord]:
        await trio.lowlevel.checkpoint()
        rows = [
            r
            for r in self.rows.values()
            if r.status in ("completed", "failed") and (r.finished_at or 0) < finished_before
        ]
        return rows[:limit]

    async def existing(self, ids: Iterable[str]) -> set[str]:
        await trio.lowlevel.checkpoint()
        return {job_id for job_id in ids if job_id in self.rows}

    async def page(
        self,
        *,
        limit: int,
        status: JobStatus | None = None,
        before: tuple[float, str] | None = None,
        owner: str | None = None,
    ) -> list[JobRecord]:
        await trio.lowlevel.checkpoint()
        rows = sorted(self.rows.values(), key=lambda r: (r.created_at, r.id), reverse=True)
        rows = [r for r in rows if status is None or r.status == status]
        rows = [r for r in rows if owner is None or r.owner == owner]
        if before is not None:
            rows = [r for r in rows if (r.created_at, r.id) < before]
        return rows[:limit]

    def statuses(self) -> Counter[str]:
        return Counter(r.status for r in self.rows.values())


class FakeStorage:
    """A `BlobStorage` that remembers committed keys and touches no disk."""

    def __init__(self) -> None:
        self.committed: list[str] = []

    @asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        await trio.lowlevel.checkpoint()
        yield Path("/nonexistent") / key

    def temp_path(self, key: str) -> Path:
        return Path("/nonexistent") / f"{key}.tmp"

    async def write(self, key: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def commit(self, temp: Path, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self.committed.append(key)

    async def remove(self, *keys: str) -> None:
        await trio.lowlevel.checkpoint()

    async def discard(self, temp: Path) -> None:
        await trio.lowlevel.checkpoint()


class FakeRunner:
    """A `Runner` whose work takes `duration_s` of (virtual) time and never crosses processes.

    Records, per job id, how many times it ran and the highest number running at once.
    """

    def __init__(self, size: int, *, duration_s: float = 1.0) -> None:
        self._limiter = trio.CapacityLimiter(size)
        self.duration_s = duration_s
        self.running = 0
        self.max_running = 0
        self.calls: Counter[str] = Counter()
        self.started = trio.Event()
        self.behaviour: Callable[[str], None] | None = None

    @property
    def size(self) -> int:
        return int(self._limiter.total_tokens)

    def resize(self, size: int) -> None:
        self._limiter.total_tokens = size

    async def warm_up(self, *modules: str) -> None:
        await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def reserve(self) -> AsyncIterator[FakeRunner]:
        async with self._limiter:
            yield self

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        spec, source, _temps = args  # type: ignore[misc]
        job_id = Path(source).stem
        self.calls[job_id] += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            if self.behaviour is not None:
                self.behaviour(job_id)
            await trio.sleep(self.duration_s)
        finally:
            self.running -= 1
        resize = spec.variants["default"].steps[0]
        assert isinstance(resize, Resize)
        result = imaging.Result(
            width=resize.width or 1,
            height=resize.height or 1,
            format=spec.variants["default"].output_format,
            bytes=100,
        )
        return {"default": result}  # type: ignore[return-value]

"""The one place where work crosses into worker processes.

`anyio.to_process.run_sync` with one shared `CapacityLimiter`: at most `size` calls run
at once, each in its own reusable worker process; `cancellable=True` so that a timeout,
a deletion or a shutdown deadline kills the worker instead of waiting for it. Each worker
prepares itself once: a lower CPU priority than the server (the API stays responsive
under load), an address-space limit (an image cannot exhaust the host), and a watchdog
that ends it when the server is gone, so a killed server leaves no worker behind to write
into storage after the next start has cleaned it.
"""

from __future__ import annotations

import importlib
import os
import resource
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar, TypeVarTuple, Unpack

import anyio
import anyio.to_process
import msgspec

__all__ = ["ProcessRunner", "Runner", "Slot", "WorkerSetup"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# How often a worker checks that the server that started it is still alive.
PARENT_CHECK_INTERVAL_S = 0.2
# anyio's own limiter is kept out of the way: the runner's is the real bound.
UNBOUNDED = 1024


class WorkerSetup(msgspec.Struct, frozen=True, kw_only=True):
    """Process-wide settings applied once in each worker process."""

    # Below the server (nice 0) by enough that the scheduler lets the server's event loop
    # in at once when a request arrives while every core runs images: GET /jobs/{id} p50
    # under full load went from 6 to 3-4 ms, at the same jobs/s (bench.pool_sizes, 2 cores).
    niceness: int = 10
    # RLIMIT_AS: an allocation past it raises MemoryError in the worker (or kills it).
    memory_limit_bytes: int | None = None


class Slot(Protocol):
    """A reserved worker: `run` calls a picklable function in it."""

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T: ...


class Runner(Protocol):
    """Runs picklable functions with picklable arguments elsewhere, `size` at once."""

    @property
    def size(self) -> int: ...
    def resize(self, size: int) -> None: ...
    async def warm_up(self, *modules: str) -> None: ...
    def reserve(self) -> AbstractAsyncContextManager[Slot]: ...


class ProcessRunner:
    """`Runner` on anyio worker processes."""

    def __init__(self, size: int, setup: WorkerSetup | None = None) -> None:
        self._limiter = anyio.CapacityLimiter(size)
        self._unbounded = anyio.CapacityLimiter(UNBOUNDED)
        self._setup = setup or WorkerSetup()

    @property
    def size(self) -> int:
        return int(self._limiter.total_tokens)

    def resize(self, size: int) -> None:
        # Takes effect at once: waiters are woken when tokens are added, and a smaller
        # total lets running calls finish before fewer are admitted.
        self._limiter.total_tokens = size

    @asynccontextmanager
    async def reserve(self) -> AsyncIterator[Slot]:
        """Wait for a free place and an idle worker process; both are held in the block.

        Time spent here (a full pool, starting a process) is not the job's: callers put
        their job timeout around `Slot.run` only.
        """
        async with self._limiter:
            # anyio leaks a worker process cancelled while it starts (no kill, no wait),
            # so make sure an idle one exists first, uncancellably; with one already idle
            # this is a 0.1 ms round trip.
            if not _idle_worker_exists():
                with anyio.CancelScope(shield=True):
                    await self.call(_import, ((),))
            yield _ProcessSlot(self)

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """`reserve`, then one cancellable call."""
        async with self.reserve() as slot:
            return await slot.run(fn, *args)

    async def warm_up(self, *modules: str) -> None:
        """Start all `size` worker processes now, with `modules` imported in each."""
        async with anyio.create_task_group() as group:
            for _ in range(self.size):
                group.start_soon(self.run, _import, modules)

    async def call(
        self, fn: Callable[[Unpack[Ts]], T], args: tuple[*Ts], *, cancellable: bool = False
    ) -> T:
        """One call in an idle worker process, outside the runner's limit."""
        return await anyio.to_process.run_sync(
            _call_in_worker,
            self._setup,
            fn,
            args,
            cancellable=cancellable,
            limiter=self._unbounded,
        )


def _idle_worker_exists() -> bool:
    """Whether anyio has a live idle worker process to hand out (False if unsure)."""
    try:
        idle = anyio.to_process._process_pool_idle_workers.get()
    except (AttributeError, LookupError):
        return False
    return bool(idle) and idle[-1][0].returncode is None


class _ProcessSlot:
    def __init__(self, runner: ProcessRunner) -> None:
        self._runner = runner

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        return await self._runner.call(fn, args, cancellable=True)


_prepared: WorkerSetup | None = None


def _call_in_worker(setup: WorkerSetup, fn: Callable[[Unpack[Ts]], T], args: tuple[*Ts]) -> T:
    """Runs in the worker process: prepare it once, then call `fn`."""
    global _prepared
    if _prepared != setup:
        if _prepared is None:
            _watch_parent(os.getppid())
            os.nice(setup.niceness)
        if setup.memory_limit_bytes is not None:
            limit = setup.memory_limit_bytes
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        _prepared = setup
    return fn(*args)


def _import(modules: tuple[str, ...] = ()) -> None:
    for module in modules:
        importlib.import_module(module)


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()

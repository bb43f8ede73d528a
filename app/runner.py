"""The one place where work crosses into worker processes.

`anyio.to_process.run_sync` with one shared `CapacityLimiter`: at most `size` calls run
at once, each in its own reusable worker process; `cancellable=True` so that a timeout
or a shutdown deadline kills the worker instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar, TypeVarTuple, Unpack

import anyio
import anyio.to_process

__all__ = ["ProcessRunner", "Runner"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Runner(Protocol):
    """Runs a picklable function with picklable arguments somewhere else."""

    @property
    def size(self) -> int: ...
    def resize(self, size: int) -> None: ...
    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T: ...


class ProcessRunner:
    """`Runner` on anyio worker processes, `size` at a time."""

    def __init__(self, size: int) -> None:
        self._limiter = anyio.CapacityLimiter(size)

    @property
    def size(self) -> int:
        return int(self._limiter.total_tokens)

    def resize(self, size: int) -> None:
        # Takes effect at once: waiters are woken when tokens are added, and a smaller
        # total lets running calls finish before fewer are admitted.
        self._limiter.total_tokens = size

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        return await anyio.to_process.run_sync(fn, *args, cancellable=True, limiter=self._limiter)

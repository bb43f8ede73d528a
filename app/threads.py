"""Long-lived threads for blocking calls (file writes, parsing big bodies), fed by a queue.

`trio.to_thread.run_sync` costs 130-180 us of CPU per call here (a capacity limiter, the
thread cache's hand-over, the GIL passed back and forth); a thread already waiting on a
`queue.SimpleQueue` costs 30-90 us. The service makes several such calls per job, so its
blocking calls go to a few threads of its own instead. A call, once queued, runs to the
end: its caller waits for it even when cancelled (every call here is short and leaves
files or rows consistent only if it finishes).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple, Unpack

import trio

__all__ = ["Threads"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Request = Callable[[], None]


async def _hand_off(put: Callable[[Request], None], fn: Callable[[], T]) -> T:
    """`fn()`, run by whichever thread takes what `put` queues; its result or exception."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    outcome: list[Any] = []

    def request() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed back to the awaiting task
            outcome.append((False, exc))
        token.run_sync_soon(done.set)

    put(request)
    with trio.CancelScope(shield=True):
        await done.wait()
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


class Threads:
    """`size` daemon threads taking calls in turn from one queue."""

    def __init__(self, size: int, *, name: str) -> None:
        if size < 1:
            raise ValueError("a thread pool needs at least one thread")
        self._requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{number}", daemon=True)
            for number in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            request()

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """`fn(*args)` on one of the threads."""
        return await _hand_off(self._requests.put, lambda: fn(*args))

    def close(self) -> None:
        """Let the threads finish what is queued, then stop them."""
        for _ in self._threads:
            self._requests.put(None)
        for thread in self._threads:
            thread.join()

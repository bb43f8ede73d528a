"""Functions that tests run in worker processes (importable by the workers)."""

from __future__ import annotations

import os
import time


def busy(seconds: float) -> tuple[float, float, int]:
    """Spin the CPU for `seconds`; returns (start, end, pid)."""
    start = time.time()
    while time.time() - start < seconds:
        pass
    return start, time.time(), os.getpid()


def crash() -> None:
    os._exit(13)


def sleep_forever(marker: str) -> None:
    with open(marker, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(3600)

"""Process-wide memory settings that make image work cheaper; set once per worker process.

Decoding and resampling allocate and free large buffers on every image. By default glibc
serves any allocation over 128 KiB with a fresh `mmap`, and Pillow gives every image block
back at once, so each image pays for thousands of page faults on memory it had a moment
ago. Measured here (one process, pillow-simd AVX2, median of 20 jobs,
``.venv/bin/python`` on the benchmark workloads): Elephants 1920x1080 resize 200x200 65.5
-> 45.6 ms, Path 2560x1600 resize 800x600 38.6 -> 20.9 ms, Gulp PNG 64 -> 54 ms, Elephants
5640x3172 thumbnail 647 -> 578 ms.

What is kept for reuse is bounded: at most `PILLOW_BLOCKS_MAX` image blocks, and free
heap over `TRIM_THRESHOLD_BYTES` goes back to the system.
"""

from __future__ import annotations

import ctypes
import sys

from PIL import Image

__all__ = ["configure_memory", "pillow_blocks_max"]

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024
PILLOW_BLOCKS_MAX = 4


def configure_memory() -> bool:
    """Keep freed buffers of up to a few MiB for reuse; idempotent.

    Returns False where the C library has no `mallopt` (not glibc): nothing else changes.
    """
    if pillow_blocks_max() >= PILLOW_BLOCKS_MAX:
        return True  # done already: this runs before every job
    # What Pillow's own PILLOW_BLOCKS_MAX environment variable sets at import.
    Image.core.set_blocks_max(PILLOW_BLOCKS_MAX)  # type: ignore[attr-defined]
    return _tune_malloc()


def _tune_malloc() -> bool:
    """Serve allocations of up to `MMAP_THRESHOLD_BYTES` from the heap, and keep up to
    `TRIM_THRESHOLD_BYTES` of freed heap; False where there is no glibc `mallopt`."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def pillow_blocks_max() -> int:
    """How many freed image blocks Pillow keeps for reuse (0 by default)."""
    return int(Image.core.get_blocks_max())  # type: ignore[attr-defined]

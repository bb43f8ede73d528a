"""Optional py-spy profile of the server process under load, and a summary of where it spends CPU.

``bench.pool_sizes --profile`` wraps one batch per workload in ``open_profile``: py-spy
samples the server (not its image workers) without pausing it, only the thread holding
the GIL (``--gil``: py-spy counts a thread waiting for the GIL as busy otherwise), and
writes collapsed stacks per thread; ``summarize`` then gives the share of the wall time
the GIL was busy, per thread, per layer (HTTP, app, SQLite, process hand-off...; a stack
is charged to its innermost frame outside trio's plumbing, so a thread hop counts for the
code that asked for it) and the functions with the most own ("self") samples. Native
work done without the GIL (SQLite I/O, file and pipe writes) is not in it: the /proc CPU
figures are.
Needs ``py-spy`` on PATH (``pip install py-spy``: it does not require Pillow) and ptrace.

Summarise an existing file with ``python -m bench.profile FILE``.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bench.procs import stop_process

__all__ = ["LAYERS", "open_profile", "py_spy", "summarize"]

SAMPLE_RATE = 250
# py-spy writes its file after SIGINT; give it time, then give up (bounded).
STOP_DEADLINE_S = 30.0
# Frames that only carry out what a caller asked for (scheduling, cancel scopes, thread
# hops): a stack is charged to the innermost frame that is not one of these.
PLUMBING = (
    "trio/_core",
    "trio/_timeouts",
    "trio/_util",
    "trio/_threads",
    "trio/_socket",
    "trio/_highlevel",
    "trio/_sync",
    "trio/_channel",
    "trio/_file_io",
    "trio/_unix_pipes",
    "contextlib.py",
    "<frozen abc>",
    "outcome/",
    "sniffio/",
    "anyio/_backends",
    "attrs generated",
)
# The layer a stack is charged to: the first marker found in that frame.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLite (store thread and hand-off)", ("sqlite3", "app/store.py")),
    ("to_process hand-off (pickle, pipes)", ("anyio/to_process.py", "pickle", "app/runner.py")),
    ("uploads: checks, storage files", ("app/storage.py", "app/submissions.py", "imaging/")),
    ("logging (JSON lines)", ("logging/__init__.py", "app/logs.py")),
    ("request body, multipart", ("formparser", "multipart", "wrappers/request")),
    ("HTTP (hypercorn, h11)", ("hypercorn/", "h11/")),
    ("Quart/werkzeug routing, responses", ("quart/", "quart_trio/", "werkzeug/")),
    ("app routes, service, workers", ("app/",)),
)
SCHEDULER = "trio scheduler itself (run loop, epoll, wake-ups)"


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@asynccontextmanager
async def open_profile(pid: int, output: Path) -> AsyncIterator[Path]:
    """Profile ``pid`` while the block runs; collapsed stacks end up in ``output``."""
    executable = py_spy()
    if executable is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    command = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(SAMPLE_RATE),
        "--nonblocking",
        "--gil",
        "--threads",
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield output
    finally:
        await stop_process(process, signal.SIGINT, deadline_s=STOP_DEADLINE_S)


def _stacks(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames outermost first, samples) per line of py-spy's raw output."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        thread, *rest = frames.split(";")
        if thread.startswith("thread ("):
            name = thread.partition(": ")[2] or thread
        else:
            name, rest = "?", [thread, *rest]
        stacks.append((_thread_kind(name), rest, int(count)))
    return stacks


def _thread_kind(name: str) -> str:
    """Thread names without their numbers: "Trio thread 3" -> "Trio thread"."""
    return name.rstrip("0123456789 -").strip() or name


def _short(frame: str) -> str:
    """``fn (path/to/lib/pkg/mod.py:12)`` -> ``fn (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    parts = file.split("/")
    return f"{name} ({'/'.join(parts[-2:])})"


def _layer(frames: list[str]) -> str:
    """The layer of the innermost frame that is not plumbing (trio's run loop if none)."""
    for frame in reversed(frames):
        if any(marker in frame for marker in PLUMBING):
            continue
        if "app/__main__.py" in frame or "runpy" in frame:
            return SCHEDULER
        for layer, markers in LAYERS:
            if any(marker in frame for marker in markers):
                return layer
        return "other: " + _short(frame)
    return SCHEDULER


def summarize(path: Path, *, wall_s: float = 0.0, top: int = 15) -> str:
    """Where the server held the GIL: per thread, per layer, per function, as text."""
    stacks = _stacks(path)
    total = sum(count for _, _, count in stacks)
    if not total:
        return f"{path}: no samples (was py-spy allowed to ptrace the server?)"
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    for thread, frames, count in stacks:
        threads[thread] += count
        if frames:
            own[_short(frames[-1])] += count
            layers[_layer(frames)] += count
    busy = f", GIL held {100 * total / (SAMPLE_RATE * wall_s):.0f}% of the time" if wall_s else ""
    lines = [f"{path.name}: {total} samples with the GIL at {SAMPLE_RATE} Hz{busy}"]
    lines.append("  by thread:")
    for thread, count in threads.most_common():
        lines.append(f"    {100 * count / total:5.1f}%  {thread}")
    lines.append("  by layer (charged to the innermost frame that is not trio plumbing):")
    for layer, count in layers.most_common(12):
        lines.append(f"    {100 * count / total:5.1f}%  {layer}")
    lines.append(f"  top {top} functions by own samples:")
    for frame, count in own.most_common(top):
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


if __name__ == "__main__":
    for argument in sys.argv[1:] or ["--help"]:
        if argument.startswith("-"):
            print(__doc__)
            break
        print(summarize(Path(argument)))

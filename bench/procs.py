"""CPU time and memory of processes and of the whole machine, read from /proc (Linux only).

``ProcessSampler`` follows a server and its children (the image workers) through a run:
CPU seconds each side used, peak resident memory, and how much CPU *other* processes took
meanwhile (the machine is shared: that number says how noisy a figure is).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import msgspec
import trio

__all__ = [
    "MachineCpu",
    "ProcessSampler",
    "Quiet",
    "ResourceUsage",
    "add_quiet_options",
    "children",
    "machine_cpu",
    "stop_process",
    "wait_for_quiet",
]

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


class MachineCpu(msgspec.Struct, frozen=True):
    """Cumulative CPU seconds of the whole machine: busy (not idle/iowait) and total."""

    busy_s: float
    total_s: float


def machine_cpu() -> MachineCpu:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # guest time is already counted in user
    idle = ticks[3] + ticks[4]
    return MachineCpu(busy_s=(sum(ticks) - idle) / TICKS_PER_S, total_s=sum(ticks) / TICKS_PER_S)


class Quiet(msgspec.Struct, frozen=True, kw_only=True):
    """Before a measurement, wait up to ``max_wait_s`` for the machine to be this idle."""

    below_pct: float
    max_wait_s: float


def add_quiet_options(parser: argparse.ArgumentParser) -> None:
    """``--quiet-below`` and ``--quiet-wait-s``, for the commands that measure."""
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=25.0,
        metavar="PCT",
        help="before each measurement wait until the machine's CPU use is below PCT%% ...",
    )
    parser.add_argument(
        "--quiet-wait-s", type=float, default=10.0, help="... for at most this long (0: never)"
    )


async def stop_process(process: trio.Process, signum: int, *, deadline_s: float) -> int:
    """Send ``signum``, wait up to ``deadline_s``, then SIGKILL; returns the exit code.
    Shielded: it runs to the end even in a cancelled scope's cleanup."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signum)
        with trio.move_on_after(deadline_s):
            await process.wait()
        if process.returncode is None:
            process.kill()
        code = await process.wait()
    return code


def wait_for_quiet(quiet: Quiet, window_s: float = 1.0) -> float:
    """Block until the machine's CPU use over ``window_s`` is below ``quiet.below_pct`` (or
    ``quiet.max_wait_s`` has passed); returns the last reading, % of all cores."""
    deadline = time.monotonic() + quiet.max_wait_s
    while True:
        before = machine_cpu()
        time.sleep(window_s)
        after = machine_cpu()
        total = after.total_s - before.total_s
        busy = 100 * (after.busy_s - before.busy_s) / total if total > 0 else 0.0
        if busy < quiet.below_pct or time.monotonic() >= deadline:
            return round(busy, 1)


def own_children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (as ``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_s() -> float:
    """CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def process_memory_mib(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of ``pid`` in MiB; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def threads_cpu_s(pid: int) -> dict[int, float]:
    """utime + stime of each thread of ``pid``, by thread id (the main thread's is ``pid``)."""
    found: dict[int, float] = {}
    try:
        tasks = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except (OSError, ValueError):
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        found[tid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    return found


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (of all its threads)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return found


class ResourceUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What a server and its workers used over a window, as % of the machine (all cores)."""

    window_s: float
    server_cpu_s: float
    workers_cpu_s: float
    client_cpu_s: float
    server_cpu_pct: float
    server_main_thread_cpu_pct: float  # the event loop; the rest is SQLite and thread pools
    workers_cpu_pct: float
    client_cpu_pct: float
    foreign_cpu_pct: float  # every other process on the machine: noise
    server_peak_rss_mib: float
    worker_peak_rss_mib: float
    total_peak_rss_mib: float
    workers_seen: int


class ProcessSampler:
    """Samples a server and its children; ``finish()`` sums up the window since ``__init__``.

    CPU is exact for processes alive at the last sample (a worker that exits in between
    loses at most one sampling interval). Peak RSS uses the kernel's VmHWM per process
    and the largest sampled sum of VmRSS for the whole tree.
    """

    def __init__(self, server_pid: int) -> None:
        self._server = server_pid
        self._started_cpu = machine_cpu()
        self._started_own = own_cpu_s()
        self._server_start = process_cpu_s(server_pid) or 0.0
        self._server_last = self._server_start
        self._threads_start = threads_cpu_s(server_pid)
        self._threads_last = dict(self._threads_start)
        # Children alive now start from their current CPU time; later ones from zero.
        self._child_start = {pid: process_cpu_s(pid) or 0.0 for pid in children(server_pid)}
        self._child_last = dict(self._child_start)
        self._server_hwm = 0.0
        self._child_hwm = 0.0
        self._total_rss = 0.0
        self.sample()

    def sample(self) -> None:
        cpu = process_cpu_s(self._server)
        if cpu is not None:
            self._server_last = cpu
        for tid, thread_cpu in threads_cpu_s(self._server).items():
            self._threads_start.setdefault(tid, 0.0)
            self._threads_last[tid] = thread_cpu
        memory = process_memory_mib(self._server)
        total = 0.0
        if memory is not None:
            total += memory[0]
            self._server_hwm = max(self._server_hwm, memory[1])
        for pid in children(self._server):
            child_cpu = process_cpu_s(pid)
            child_memory = process_memory_mib(pid)
            if child_cpu is None or child_memory is None:
                continue
            self._child_start.setdefault(pid, 0.0)
            self._child_last[pid] = child_cpu
            total += child_memory[0]
            self._child_hwm = max(self._child_hwm, child_memory[1])
        self._total_rss = max(self._total_rss, total)

    def finish(self) -> ResourceUsage:
        self.sample()
        now = machine_cpu()
        window = now.total_s - self._started_cpu.total_s  # CPU-seconds of all cores
        cores = os.cpu_count() or 1
        busy = now.busy_s - self._started_cpu.busy_s
        server = self._server_last - self._server_start
        main = self._threads_last.get(self._server, 0.0) - self._threads_start.get(
            self._server, 0.0
        )
        workers = sum(self._child_last[p] - self._child_start[p] for p in self._child_last)
        client = own_cpu_s() - self._started_own

        def pct(seconds: float) -> float:
            return round(100 * seconds / window, 1) if window > 0 else 0.0

        return ResourceUsage(
            window_s=round(window / cores, 3),
            server_cpu_s=round(server, 3),
            workers_cpu_s=round(workers, 3),
            client_cpu_s=round(client, 3),
            server_cpu_pct=pct(server),
            server_main_thread_cpu_pct=pct(main),
            workers_cpu_pct=pct(workers),
            client_cpu_pct=pct(client),
            foreign_cpu_pct=pct(max(busy - server - workers - client, 0.0)),
            server_peak_rss_mib=round(self._server_hwm, 1),
            worker_peak_rss_mib=round(self._child_hwm, 1),
            total_peak_rss_mib=round(self._total_rss, 1),
            workers_seen=len(self._child_last),
        )

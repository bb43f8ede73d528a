"""What a benchmark ran on: CPU, cores, memory, Python, Pillow (and whether it is pillow-simd)."""

from __future__ import annotations

import importlib
import os
import platform
import re
import sys
from pathlib import Path

import msgspec
import PIL
from PIL import Image

__all__ = ["Machine", "describe_machine", "pillow_build_flags", "summary_line"]

# CPU features that decide which of pillow-simd's code paths can run.
SIMD_CPU_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "avx512f")
# The DW_AT_producer string GCC leaves in the debug info: "GNU C17 12.2.0 -msse4 -O3 ...".
_PRODUCER = re.compile(rb"GNU C[0-9+]* [0-9.]+ [ -~]{0,400}")
_MACHINE_OPTION = re.compile(r"-m[a-z0-9_.=-]+")


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    """The machine and interpreter a figure belongs to."""

    cpu_model: str
    cores: int
    usable_cores: int
    cpu_simd_flags: list[str]
    memory_gib: float
    kernel: str
    load_average: list[float]
    python: str
    python_executable: str
    pillow_version: str
    pillow_simd: bool
    pillow_build_flags: list[str]
    pillow_libjpeg_turbo: str | None


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [flag for flag in SIMD_CPU_FLAGS if flag in flags]


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 0.0


def pillow_build_flags() -> list[str]:
    """The ``-m`` machine options ``PIL._imaging`` was compiled with (e.g. ``-msse4``,
    ``-mavx2``), read from the compiler's record in the debug info; [] if stripped."""
    path = getattr(importlib.import_module("PIL._imaging"), "__file__", None)
    if not path:
        return []
    try:
        blob = Path(path).read_bytes()
    except OSError:
        return []
    options: set[str] = set()
    for producer in _PRODUCER.findall(blob):
        for option in _MACHINE_OPTION.findall(producer.decode("ascii", "replace")):
            if not option.startswith(("-mtune", "-march")):
                options.add(option)
    return sorted(options)


def _libjpeg_turbo() -> str | None:
    from PIL import features

    version = features.version("libjpeg_turbo")
    return str(version) if version else None


def describe_machine() -> Machine:
    """Describe this machine and interpreter; cheap (reads /proc and one shared object)."""
    model, cpu_flags = _cpuinfo()
    version = PIL.__version__
    Image.init()
    return Machine(
        cpu_model=model,
        cores=os.cpu_count() or 1,
        usable_cores=len(os.sched_getaffinity(0)),
        cpu_simd_flags=cpu_flags,
        memory_gib=_memory_gib(),
        kernel=platform.release(),
        load_average=[round(x, 2) for x in os.getloadavg()],
        python=platform.python_version(),
        python_executable=sys.executable,
        pillow_version=version,
        # Nothing else at run time tells the SIMD build apart from stock Pillow.
        pillow_simd=version.endswith(".post0"),
        pillow_build_flags=pillow_build_flags(),
        pillow_libjpeg_turbo=_libjpeg_turbo(),
    )


def summary_line(machine: Machine) -> str:
    """One line for a report header."""
    pillow = "pillow-simd" if machine.pillow_simd else "Pillow"
    flags = " ".join(machine.pillow_build_flags) or "no -m flags recorded"
    return (
        f"{machine.cpu_model}, {machine.usable_cores} cores, {machine.memory_gib} GiB; "
        f"Python {machine.python}; {pillow} {machine.pillow_version} ({flags}); "
        f"load average at start {machine.load_average[0]:.2f}"
    )


if __name__ == "__main__":
    print(msgspec.json.format(msgspec.json.encode(describe_machine())).decode())

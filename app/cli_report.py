"""How `imgjobs submit` reports: one JSON line per job for scripts, rich progress bars on a
terminal, and the terminal test both share."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol

# Only the standard library at import (see app/cli.py); rich is imported when drawing.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = [
    "Bars",
    "Lines",
    "Report",
    "Result",
    "Status",
    "console",
    "is_terminal",
    "live_report",
    "print_json",
]

#: Uploads at least this big get a progress bar of their own.
BIG_UPLOAD_BYTES: Final = 1024 * 1024

Status = Literal["pending", "completed", "failed", "error"]


class Result(NamedTuple):
    """What became of one file of `imgjobs submit`: one JSON line, or one line of text."""

    file: str
    status: Status
    job_id: str | None = None
    error: dict[str, Any] | None = None
    variants: dict[str, Any] | None = None
    saved: dict[str, str] | None = None
    #: True when the server answered an earlier submit with the same idempotency key.
    replayed: bool | None = None

    def json(self) -> str:
        return json.dumps({k: v for k, v in self._asdict().items() if v is not None})

    def text(self) -> str:
        """The line shown on a terminal (rich markup)."""
        from rich.markup import escape

        job = f" job {self.job_id}" if self.job_id else ""
        job += " (replayed)" if self.replayed else ""
        if self.status == "pending":
            return f"[cyan]•[/] {escape(self.file)}{job} pending"
        if self.status != "completed":
            return f"[red]✗[/] {escape(self.file)}{job}: {escape(self.problem())}"
        outputs = ", ".join(
            f"{view['width']}x{view['height']} {view['format']} {view['bytes']:,} B"
            + (f" → {escape(self.saved[name])}" if self.saved and name in self.saved else "")
            for name, view in (self.variants or {}).items()
        )
        return f"[green]✓[/] {escape(self.file)}{job}: {outputs}"

    def problem(self) -> str:
        error = self.error or {}
        status = f"HTTP {error['http_status']} " if "http_status" in error else ""
        return f"{status}{error.get('code') or 'error'}: {error.get('message', '')}"


class Report(Protocol):
    """How `imgjobs submit` shows what it does: rich on a terminal, JSON lines otherwise."""

    def start(self, file: Path) -> Any: ...
    def uploaded(self, task: Any, sent: int, total: int) -> None: ...
    def retrying(self, task: Any, attempt: int, delay_s: float) -> None: ...
    def waiting(self, task: Any) -> None: ...
    def downloading(self, task: Any) -> None: ...
    def finish(self, task: Any, result: Result) -> None: ...


class Lines:
    """One JSON line per job on stdout, as each finishes; nothing else."""

    def start(self, file: Path) -> None:
        return None

    def uploaded(self, task: None, sent: int, total: int) -> None:
        pass

    def retrying(self, task: None, attempt: int, delay_s: float) -> None:
        pass

    def waiting(self, task: None) -> None:
        pass

    def downloading(self, task: None) -> None:
        pass

    def finish(self, task: None, result: Result) -> None:
        print(result.json(), flush=True)


class Bars:
    """A row per file in flight (an upload bar for big files, then a spinner while the job
    runs), an overall bar for a batch, and a line per file as it finishes."""

    def __init__(self, progress: Progress, files: Sequence[Path]) -> None:
        self.progress = progress
        self.count = len(files)
        self.finished: list[Result] = []
        #: Each row's file name, and whether it has an upload bar.
        self.names: dict[TaskID, tuple[str, bool]] = {}
        self.overall = (
            progress.add_task("all files", total=self.count, detail=f"0/{self.count}")
            if self.count > 1
            else None
        )

    def start(self, file: Path) -> TaskID:
        size = file.stat().st_size
        total = size if size >= BIG_UPLOAD_BYTES else None
        task = self.progress.add_task(f"{file.name}: uploading", total=total, detail="")
        self.names[task] = (file.name, total is not None)
        return task

    def uploaded(self, task: TaskID, sent: int, total: int) -> None:
        if self.names[task][1]:
            from rich.filesize import decimal

            self.progress.update(task, completed=sent, detail=f"{decimal(sent)}/{decimal(total)}")

    def retrying(self, task: TaskID, attempt: int, delay_s: float) -> None:
        doing = f"server busy, retry {attempt} in {delay_s:g} s"
        self.progress.update(task, description=self._doing(task, doing))

    def waiting(self, task: TaskID) -> None:
        self.progress.reset(task, total=None, description=self._doing(task, "processing"))
        self.progress.update(task, detail="")

    def downloading(self, task: TaskID) -> None:
        self.progress.update(task, description=self._doing(task, "downloading"))

    def _doing(self, task: TaskID, what: str) -> str:
        return f"{self.names[task][0]}: {what}"

    def finish(self, task: TaskID, result: Result) -> None:
        self.progress.remove_task(task)
        self.progress.console.print(result.text(), highlight=False, soft_wrap=True)
        self.finished.append(result)
        if self.overall is not None:
            done = f"{len(self.finished)}/{self.count}"
            self.progress.update(self.overall, advance=1, detail=done)

    def summary(self, elapsed_s: float) -> str:
        counts: dict[str, int] = {}
        for result in self.finished:
            counts[result.status] = counts.get(result.status, 0) + 1
        parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        return f"{self.count} file{'s' if self.count != 1 else ''}: {parts} in {elapsed_s:.1f} s"


def is_terminal() -> bool:
    """Is stdout a terminal? `TTY_COMPATIBLE=1` or `0` (rich's variable) says so instead."""
    forced = os.environ.get("TTY_COMPATIBLE")
    return forced == "1" if forced in ("0", "1") else sys.stdout.isatty()


def console() -> Console:
    from rich.console import Console

    return Console(force_terminal=is_terminal())


def print_json(data: bytes) -> None:
    if is_terminal():
        console().print_json(data.decode())
    else:
        print(data.decode(), flush=True)


@contextmanager
def live_report(files: Sequence[Path]) -> Iterator[Report]:
    if not is_terminal():
        yield Lines()
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
    detail = TextColumn("{task.fields[detail]}")
    with Progress(*columns, detail, TimeElapsedColumn(), console=console(), transient=True) as bar:
        started = time.monotonic()
        bars = Bars(bar, files)
        yield bars
        bar.console.print(bars.summary(time.monotonic() - started), highlight=False)

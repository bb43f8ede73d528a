"""Small numbers for benchmarks: percentiles, latency summaries, a progress bar on stderr."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TextIO

import msgspec

__all__ = ["Progress", "Spread", "Summary", "percentile", "ratio", "spread", "summarize"]


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """Order statistics of a sample, in the sample's unit (milliseconds for latencies)."""

    count: int
    p50: float
    p95: float
    max: float
    mean: float

    def brief(self, digits: int = 0) -> str:
        """``p50 / p95 / max`` for a table cell; "-" for an empty sample."""
        if self.count == 0:
            return "-"
        return f"{self.p50:.{digits}f} / {self.p95:.{digits}f} / {self.max:.{digits}f}"


EMPTY = Summary(count=0, p50=math.nan, p95=math.nan, max=math.nan, mean=math.nan)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, interpolated linearly (as numpy)."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Iterable[float]) -> Summary:
    """p50, p95, max and mean of ``values``; NaNs where there are none."""
    ordered = sorted(values)
    if not ordered:
        return EMPTY
    return Summary(
        count=len(ordered),
        p50=round(percentile(ordered, 50), 3),
        p95=round(percentile(ordered, 95), 3),
        max=round(ordered[-1], 3),
        mean=round(sum(ordered) / len(ordered), 3),
    )


class Spread(msgspec.Struct, frozen=True, kw_only=True):
    """The median and range of a few measurements (batches, rounds)."""

    median: float
    low: float
    high: float

    def cell(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}-{self.high:.{digits}f}]"


def spread(values: Sequence[float]) -> Spread:
    """Median, min and max of ``values`` (at least one)."""
    low, high = round(min(values), 4), round(max(values), 4)
    return Spread(median=round(statistics.median(values), 4), low=low, high=high)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is zero or missing."""
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


class Progress:
    """A one-line progress bar on stderr: steps of a run, and units within the step.

    On a terminal the line is redrawn in place (at most every ``REDRAW_S``); otherwise one
    line is printed per finished step, so logs of ``make bench`` stay readable.
    """

    WIDTH = 28
    REDRAW_S = 0.1

    def __init__(self, steps: int, *, stream: TextIO | None = None) -> None:
        self.steps = max(steps, 1)
        self.done_steps = 0
        self.label = ""
        self.current = 1
        self.units = 0
        self.done_units = 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._drawn = 0.0
        self._started = time.monotonic()

    def step(self, label: str, units: int = 0) -> None:
        """Start the next step, described by ``label``, made of ``units`` units."""
        self.label, self.units, self.done_units = label, units, 0
        self.current = min(self.done_steps + 1, self.steps)
        self._draw(force=True)

    def advance(self, units: int = 1) -> None:
        self.done_units = min(self.done_units + units, self.units)
        self._draw()

    def finish_step(self, note: str = "") -> None:
        self.done_steps = min(self.done_steps + 1, self.steps)
        self.done_units = self.units
        if self._tty:
            self._draw(force=True, note=note)
        else:
            self._write(f"{self._line(note)}\n")

    def close(self) -> None:
        if self._tty:
            self._write("\n")

    def message(self, text: str) -> None:
        """A line of its own above the bar."""
        self._write(("\r\x1b[K" if self._tty else "") + text + "\n")
        self._draw(force=True)

    def _line(self, note: str = "") -> str:
        within = self.done_units / self.units if self.units else 0.0
        fraction = min((self.done_steps + within) / self.steps, 1.0)
        filled = round(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        units = f" {self.done_units}/{self.units}" if self.units else ""
        elapsed = time.monotonic() - self._started
        tail = f"  {note}" if note else ""
        return (
            f"[{bar}] {fraction:4.0%} {elapsed:5.0f}s  step {self.current}/{self.steps}"
            f" {self.label}{units}{tail}"
        )

    def _draw(self, *, force: bool = False, note: str = "") -> None:
        if not self._tty:
            return
        now = time.monotonic()
        if force or now - self._drawn >= self.REDRAW_S:
            self._drawn = now
            self._write("\r\x1b[K" + self._line(note)[:160])

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()

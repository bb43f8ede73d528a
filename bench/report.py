"""What ``bench.pool_sizes`` found, as structs, paste-ready Markdown tables and a JSON file."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench.ceiling import CeilingPoint
from bench.machine import Machine, summary_line
from bench.procs import ResourceUsage
from bench.stats import Summary, ratio
from bench.workloads import WORKLOADS

__all__ = [
    "PoolPoint",
    "Quality",
    "RunReport",
    "markdown",
    "results_dir",
    "source_revision",
    "stamp",
    "write_json",
]

RESULTS = Path(__file__).resolve().parent / "results"
# Other processes took more than this share of the machine during a batch: marked "*".
NOISY_PCT = 15.0


class PoolPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One workload on one fresh server with ``pool_size`` workers."""

    workload: str
    pool_size: int
    jobs: int
    upload: str
    completed: int
    failures: int
    failure_samples: list[str]
    wall_s: float
    jobs_per_s: float
    ceiling_processes: int
    ceiling_images_per_s: float
    ceiling_ms_per_image: float
    efficiency: float  # jobs_per_s / ceiling_images_per_s at min(pool size, cores)
    e2e_ms: Summary
    submit_ms: Summary  # POST /jobs of the batch's own jobs, all sent at once: the burst
    submit_loaded_ms: Summary  # a 1 MB raw POST every 500 ms once the batch is all submitted
    status_ms: Summary  # GET /jobs/{id} (no wait) while under load
    health_ms: Summary  # GET /health while under load
    probe_errors: int
    dropped_polls: int  # long-polls the server closed without answering (then polled again)
    queue_wait_ms: Summary  # from the server's job.started lines
    processing_ms: Summary  # from the server's job.finished lines
    usage: ResourceUsage
    server_exit_code: int | None
    profile: str = ""
    # With --repeats: jobs/s of every run of this point (in round order); the point is the
    # median run.
    runs_jobs_per_s: list[float] = msgspec.field(default_factory=list)
    tree: str = ""  # the source tree's label when a run compares several (bench.server)

    @property
    def label(self) -> str:
        """The workload, and the source tree when there is one: a row's name."""
        return f"{self.workload} ({self.tree})" if self.tree else self.workload

    def jobs_cell(self) -> str:
        """jobs/s, with the range of the runs when there were several."""
        text = _num(self.jobs_per_s)
        if len(self.runs_jobs_per_s) > 1:
            text += f" ({_num(min(self.runs_jobs_per_s))}-{_num(max(self.runs_jobs_per_s))})"
        return text


class Quality(msgspec.Struct, frozen=True, kw_only=True):
    """PSNR of one result against full decode + stock LANCZOS at the same size."""

    workload: str
    width: int
    height: int
    psnr_png_db: float  # the job asked for PNG: the resize pipeline alone
    served_format: str
    psnr_served_db: float  # the benchmarked output as served (JPEG q85 for JPEG inputs)


class RunReport(msgspec.Struct, frozen=True, kw_only=True):
    started_at: str
    command: list[str]
    source: str  # the commit measured, and whether app/ or imaging/ had changes on top
    machine: Machine
    jobs: int
    upload: str
    pool_sizes: list[int]
    ceiling_duration_s: float
    ceiling: list[CeilingPoint]
    points: list[PoolPoint]
    quality: list[Quality]
    machine_after: Machine | None = None
    # With --app-root: each source tree's label and revision (``source`` is the bench's).
    trees: dict[str, str] = msgspec.field(default_factory=dict)


def source_revision(tree: Path | None = None) -> str:
    """``<commit> (+ uncommitted changes in app/ imaging/)`` of ``tree`` (this checkout by
    default, or e.g. a worktree that ``bench.server`` serves), read-only git calls."""
    root = tree or RESULTS.parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "app", "imaging"],
            cwd=root,
            timeout=30,
            check=False,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in app/ imaging/" if dirty else "")


def results_dir() -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def write_json(path: Path, value: object) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(value)) + b"\n")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---" if i == 0 else "--:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def throughput_table(points: Sequence[PoolPoint]) -> str:
    headers = [
        "workload",
        "pool",
        "jobs/s",
        "ceiling img/s (procs)",
        "efficiency",
        "end-to-end p50 / p95 / max ms",
        "burst submit p50 / p95 ms",
        "1 MB submit under load p50 / p95 ms",
        "GET job p50 / p95 ms",
        "GET /health p50 / p95 ms",
        "failures",
        "dropped polls",
    ]
    rows = [
        [
            p.label,
            str(p.pool_size),
            p.jobs_cell() + (" *" if p.usage.foreign_cpu_pct > NOISY_PCT else ""),
            f"{_num(p.ceiling_images_per_s)} ({p.ceiling_processes})",
            f"{p.efficiency:.0%}" if not math.isnan(p.efficiency) else "-",
            p.e2e_ms.brief(),
            f"{_num(p.submit_ms.p50)} / {_num(p.submit_ms.p95)}",
            f"{_num(p.submit_loaded_ms.p50)} / {_num(p.submit_loaded_ms.p95)}",
            f"{_num(p.status_ms.p50)} / {_num(p.status_ms.p95)}",
            f"{_num(p.health_ms.p50)} / {_num(p.health_ms.p95)}",
            str(p.failures + p.probe_errors),
            str(p.dropped_polls),
        ]
        for p in points
    ]
    return _table(headers, rows)


def time_table(points: Sequence[PoolPoint]) -> str:
    """Where the time goes: the server's own log figures next to the ceiling's."""
    headers = [
        "workload",
        "pool",
        "queue wait p50 ms",
        "processing p50 ms",
        "ceiling ms/image",
        "server CPU ms/job",
        "CPU % server (event loop) / workers / client / other",
        "peak RSS MiB server / worker / all",
    ]
    rows = []
    for p in points:
        u = p.usage
        rows.append(
            [
                p.label,
                str(p.pool_size),
                _num(p.queue_wait_ms.p50, 0),
                _num(p.processing_ms.p50, 0),
                _num(p.ceiling_ms_per_image, 0),
                _num(ratio(1000 * u.server_cpu_s, p.completed), 1),
                f"{u.server_cpu_pct:.0f} ({u.server_main_thread_cpu_pct:.0f})"
                f" / {u.workers_cpu_pct:.0f} / {u.client_cpu_pct:.0f}"
                f" / {u.foreign_cpu_pct:.0f}",
                f"{u.server_peak_rss_mib:.0f} / {u.worker_peak_rss_mib:.0f}"
                f" / {u.total_peak_rss_mib:.0f}",
            ]
        )
    return _table(headers, rows)


def scaling_table(points: Sequence[PoolPoint]) -> str:
    """jobs/s at pool 1 against pool 2 (and the best pool size), per workload (and tree);
    with repeats, also the ratio within each round."""
    rows = []
    for name in dict.fromkeys(p.label for p in points):
        mine = {p.pool_size: p for p in points if p.label == name}
        one = mine[1].jobs_per_s if 1 in mine else math.nan
        two = mine[2].jobs_per_s if 2 in mine else math.nan
        best = max(mine.values(), key=lambda p: p.jobs_per_s)
        rounds = (
            [b / a for a, b in zip(mine[1].runs_jobs_per_s, mine[2].runs_jobs_per_s, strict=True)]
            if 1 in mine
            and 2 in mine
            and len(mine[1].runs_jobs_per_s) == len(mine[2].runs_jobs_per_s) > 1
            and min(mine[1].runs_jobs_per_s) > 0
            else []
        )
        rows.append(
            [
                name,
                mine[1].jobs_cell() if 1 in mine else "-",
                mine[2].jobs_cell() if 2 in mine else "-",
                f"{ratio(two, one):.2f}x" if not math.isnan(ratio(two, one)) else "-",
                f"{min(rounds):.2f}-{max(rounds):.2f}x" if rounds else "-",
                f"{mine[2].efficiency:.0%}"
                if 2 in mine and not math.isnan(mine[2].efficiency)
                else "-",
                f"{_num(best.jobs_per_s)} at {best.pool_size}",
            ]
        )
    headers = [
        "workload",
        "pool 1 jobs/s",
        "pool 2 jobs/s",
        "2 / 1",
        "2 / 1 in each round",
        "efficiency at 2",
        "best",
    ]
    return _table(headers, rows)


def quality_table(quality: Sequence[Quality]) -> str:
    rows = [
        [
            q.workload,
            WORKLOADS[q.workload].job,
            f"{q.width}x{q.height}",
            _num(q.psnr_png_db),
            f"{_num(q.psnr_served_db)} ({q.served_format})",
            "ok" if q.psnr_png_db >= 35 else "BELOW 35 dB",
        ]
        for q in quality
    ]
    headers = ["workload", "job", "output", "PSNR dB (PNG out)", "PSNR dB as served", ">= 35"]
    return _table(headers, rows)


def markdown(report: RunReport) -> str:
    """The whole report as Markdown, paste-ready for the README."""
    served = "; ".join(f"{label} = {source}" for label, source in report.trees.items())
    parts = [
        f"Measured {report.started_at} on {summary_line(report.machine)}; imgjobs"
        f" {f'source trees: {served}' if served else report.source}.",
        f"{report.jobs} concurrent jobs per point ({report.upload} upload), a fresh server per"
        " point; efficiency = service jobs/s / ceiling images/s at min(pool size, cores)"
        ' processes. "other" CPU is what processes outside the benchmark took: noise;'
        f" * marks a batch during which it was over {NOISY_PCT:g}% of the machine.",
        "",
        throughput_table(report.points),
        "",
        scaling_table(report.points),
        "",
        "Where the time goes (queue wait and processing from the server's job.started /"
        " job.finished log lines; CPU as % of all cores over the batch):",
        "",
        time_table(report.points),
    ]
    if report.quality:
        parts += ["", quality_table(report.quality)]
    return "\n".join(parts)

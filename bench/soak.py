"""Overload soak: many times more jobs than the queue holds, as fast as possible.

Starts a real server (``python -m app``, as ``make run``) with a small ``QUEUE_SIZE``,
submits ``--factor`` times that many jobs over loopback with ``--concurrency`` clients, and
meanwhile calls ``GET /health`` and ``GET /jobs/{id}`` every 50 ms and samples the server's
memory. Checks the promises of overload: every answer is 202 or 503 with ``Retry-After``;
the server's memory stays flat; health and status keep answering within milliseconds; once
drained, every accepted job is completed. Bounded in count (``--factor`` x queue) and in
time (``--deadline``); loopback only.

    python -m bench.soak                       # QUEUE_SIZE=200, 5x, 32 clients
    python -m bench.soak --queue 1000 --factor 5 --json bench/results/soak.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import msgspec
import trio

from bench.corpus import corpus_root
from bench.procs import process_memory_mib
from bench.server import ServerConfig, open_server

IMAGE = corpus_root() / "good" / "skimage__astronaut.png"
PROBE_INTERVAL_S = 0.05


class SoakResult(msgspec.Struct, kw_only=True):
    submitted: int
    answers: dict[str, int]
    retry_after_missing: int
    accepted_completed: int
    accepted_not_completed: int
    submit_s: float
    drain_s: float
    health_ms_p50: float
    health_ms_p99: float
    health_ms_max: float
    status_ms_p50: float
    status_ms_p99: float
    server_rss_mib_start: float
    server_rss_mib_peak: float
    server_rss_mib_end: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def soak(
    queue: int, factor: int, concurrency: int, pool: int, deadline_s: float
) -> SoakResult:
    data = IMAGE.read_bytes()
    total = queue * factor
    answers: Counter[str] = Counter()
    missing_retry_after = 0
    accepted: list[str] = []
    health_ms: list[float] = []
    status_ms: list[float] = []
    rss: list[float] = []
    config = ServerConfig(pool_size=pool, queue_size=queue, log_level="WARNING")
    with trio.fail_after(deadline_s):
        async with (
            open_server(config) as server,
            httpx.AsyncClient(
                base_url=server.url,
                timeout=60,
                limits=httpx.Limits(max_connections=concurrency + 4),
            ) as client,
        ):
            start_rss = process_memory_mib(server.pid)
            counter = iter(range(total))
            done_submitting = trio.Event()

            async def submitter() -> None:
                nonlocal missing_retry_after
                for _ in counter:
                    response = await client.post(
                        "/jobs?operation=thumbnail&width=64&height=64",
                        content=data,
                        headers={"Content-Type": "image/png"},
                    )
                    answers[str(response.status_code)] += 1
                    if response.status_code == 202:
                        accepted.append(response.json()["job_id"])
                    elif response.status_code == 503 and "retry-after" not in response.headers:
                        missing_retry_after += 1

            async def prober() -> None:
                # A client of its own: the submitters' connection pool is always busy.
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as own:
                    await probe_until_done(own)

            async def probe_until_done(own: httpx.AsyncClient) -> None:
                while not done_submitting.is_set():
                    began = time.perf_counter()
                    await own.get("/health")
                    health_ms.append((time.perf_counter() - began) * 1000)
                    if accepted:
                        began = time.perf_counter()
                        await own.get(f"/jobs/{accepted[-1]}")
                        status_ms.append((time.perf_counter() - began) * 1000)
                    memory = process_memory_mib(server.pid)
                    if memory:
                        rss.append(memory[0])
                    await trio.sleep(PROBE_INTERVAL_S)

            began = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(prober)
                async with trio.open_nursery() as submitters:
                    for _ in range(concurrency):
                        submitters.start_soon(submitter)
                submit_s = time.perf_counter() - began
                done_submitting.set()
            drain_began = time.perf_counter()
            statuses: Counter[str] = Counter()
            for job_id in accepted:
                job = (await client.get(f"/jobs/{job_id}", params={"wait": "30"})).json()
                statuses[job["status"]] += 1
            drain_s = time.perf_counter() - drain_began
            end_rss = process_memory_mib(server.pid)
    return SoakResult(
        submitted=total,
        answers=dict(answers),
        retry_after_missing=missing_retry_after,
        accepted_completed=statuses["completed"],
        accepted_not_completed=len(accepted) - statuses["completed"],
        submit_s=round(submit_s, 2),
        drain_s=round(drain_s, 2),
        health_ms_p50=round(statistics.median(health_ms), 2),
        health_ms_p99=round(percentile(health_ms, 0.99), 2),
        health_ms_max=round(max(health_ms), 2),
        status_ms_p50=round(statistics.median(status_ms), 2) if status_ms else 0.0,
        status_ms_p99=round(percentile(status_ms, 0.99), 2),
        server_rss_mib_start=round(start_rss[0] if start_rss else 0.0, 1),
        server_rss_mib_peak=round(max(rss, default=0.0), 1),
        server_rss_mib_end=round(end_rss[0] if end_rss else 0.0, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, default=200, help="QUEUE_SIZE of the server")
    parser.add_argument("--factor", type=int, default=5, help="jobs submitted = factor x queue")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent submitters")
    parser.add_argument("--pool", type=int, default=2, help="WORKER_POOL_SIZE")
    parser.add_argument("--deadline", type=float, default=600.0, help="give up after (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = trio.run(soak, args.queue, args.factor, args.concurrency, args.pool, args.deadline)
    text = msgspec.json.format(msgspec.json.encode(result)).decode()
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    broken = (
        set(result.answers) - {"202", "503"}
        or result.retry_after_missing
        or result.accepted_not_completed
    )
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()

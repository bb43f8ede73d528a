"""What the service does with every hostile file of the corpus, as a Markdown table.

Starts a real server (``python -m app``), submits each file of the corpus's ``bad/`` folder
(see ``bench.corpus``) to resize to 200x200 with the service's own client
(``app.client.AsyncClient``), waits for accepted jobs to end, and prints one row per file:
the answer at submit (status and error code) or the job's final status and code. Ends with
the server's and its workers' peak memory and whether the server stayed healthy.

    python -m bench.hostile
"""

from __future__ import annotations

from pathlib import Path

import trio

from app.client import AsyncClient, HTTPError
from bench.corpus import corpus_root
from bench.procs import children, process_memory_mib
from bench.server import ServerConfig, open_server

BAD = corpus_root() / "bad"


async def outcome(client: AsyncClient, path: Path) -> tuple[str, str]:
    data = await trio.Path(path).read_bytes()
    try:
        job = await client.submit(data, resize=(200, 200))
    except HTTPError as error:
        return f"{error.status} at submit", error.code or ""
    done = await client.wait(job.job_id, timeout_s=120)
    return f"202, then {done.status}", done.error.code if done.error else ""


async def main() -> None:
    files = sorted(p for p in BAD.iterdir() if p.suffix != ".tsv")
    async with (
        open_server(ServerConfig(pool_size=2)) as server,
        AsyncClient(server.url) as client,
    ):
        rows = [(path.name, *await outcome(client, path)) for path in files]
        healthy = (await client.health()).status
        server_peak = (process_memory_mib(server.pid) or (0.0, 0.0))[1]
        worker_peak = max(
            ((process_memory_mib(pid) or (0.0, 0.0))[1] for pid in children(server.pid)),
            default=0.0,
        )
    print("| file | answer | code |\n|---|---|---|")
    for name, answer, code in rows:
        print(f"| `{name}` | {answer} | {code} |")
    five_xx = sum(answer.startswith("5") for _, answer, _ in rows)
    print(
        f"\n{len(rows)} files, {five_xx} answered 5xx; server afterwards: {healthy}; "
        f"peak RSS: server {server_peak:.0f} MiB, largest worker {worker_peak:.0f} MiB"
    )


if __name__ == "__main__":
    trio.run(main)

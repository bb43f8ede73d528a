"""The `imgjobs` command, run as a subprocess (`python -m app.cli`, what the console script
calls) against real servers: `imgjobs serve` itself, or hypercorn in this process (with
webhooks to a loopback receiver, or a rate limit)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import trio
from PIL import Image

from tests.conftest import BAD, GOOD, ROOT
from tests.servers import RunningServer, ServerProcess, make_settings, open_server
from tests.test_webhooks import SECRET, answer, open_receiver

ELEPHANTS = GOOD / "mate__Elephants.jpg"  # 1920x1080
STORM = GOOD / "mate__Storm.jpg"  # 1920x1280
CAMERA = GOOD / "skimage__camera.png"  # 512x512
TRUNCATED = BAD / "handmade__Storm_first_half.jpg"  # accepted at submit, fails in the worker
NOT_AN_IMAGE = BAD / "handmade__text.jpg"  # refused at submit: 415
SMALL = [
    CAMERA,
    GOOD / "pillow__flower.webp",
    GOOD / "pillow__pil123p.png",
    GOOD / "pillow__hopper_orientation_6.jpg",
]


class Run(NamedTuple):
    code: int
    output: bytes
    stderr: str

    @property
    def stdout(self) -> str:
        return self.output.decode()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


async def imgjobs(*args: str | Path, url: str | None = None, cwd: Path = ROOT, **env: str) -> Run:
    """Run the command line as a user would, stdout a pipe (so: JSON lines)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("IMGJOBS_", "TTY_", "FORCE_COLOR", "PYTEST"))
    }
    if url is not None:
        environment["IMGJOBS_URL"] = url
    environment |= env
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-m", "app.cli", *map(str, args)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env=environment,
        )
    return Run(done.returncode, done.stdout, done.stderr.decode())


def image_size(path: Path) -> tuple[str | None, tuple[int, int]]:
    with Image.open(path) as image:
        image.load()
        return image.format, image.size


def file_size(path: Path) -> int:
    return path.stat().st_size


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with open_server(make_settings(tmp_path / "server")) as server:
        yield server


def test_the_console_script_is_the_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"imgjobs": "app.cli:main"}


async def test_serve_then_submit_three_files_and_save_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "server")
    server = ServerProcess(settings, command=[sys.executable, "-m", "app.cli", "serve"])
    async with trio.open_nursery() as nursery:
        url = await server.start(nursery)
        out = tmp_path / "out"
        run = await imgjobs(
            "submit", ELEPHANTS, STORM, CAMERA, "--resize", "320x", "--format", "png",
            "--wait", "-o", out, "--concurrency", "2", url=url,
        )  # fmt: skip
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    assert (run.code, run.stderr) == (0, "")
    lines = run.lines()
    assert sorted(line["file"] for line in lines) == sorted(map(str, [ELEPHANTS, STORM, CAMERA]))
    want = {"mate__Elephants": (320, 180), "mate__Storm": (320, 213), "skimage__camera": (320, 320)}
    for line in lines:
        stem = Path(line["file"]).stem
        saved = Path(line["saved"]["default"])
        assert (line["status"], saved) == ("completed", out / f"{stem}.png")
        view = line["variants"]["default"]
        assert (view["format"], (view["width"], view["height"])) == ("png", want[stem])
        assert image_size(saved) == ("PNG", want[stem])
        assert file_size(saved) == view["bytes"]
    assert names(out) == sorted(f"{stem}.png" for stem in want)


async def test_submit_status_download(server: RunningServer, tmp_path: Path) -> None:
    run = await imgjobs(
        "submit", CAMERA, "--resize", "100x80", "--fit", "cover", "--wait", url=server.url
    )
    assert run.code == 0, run.stderr
    [line] = run.lines()
    job_id = line["job_id"]
    assert line["variants"]["default"]["width"] == 100
    assert "saved" not in line

    status = await imgjobs("status", job_id, url=server.url)
    assert status.code == 0, status.stderr
    job = json.loads(status.stdout)
    assert (job["id"], job["status"], job["result_width"], job["result_height"]) == (
        job_id, "completed", 100, 80,
    )  # fmt: skip
    assert job["spec"]["variants"]["default"]["steps"] == [
        {"op": "resize", "width": 100, "height": 80}  # fit cover is the default, left out
    ]

    named = await imgjobs("download", job_id, "-o", tmp_path / "camera.png", url=server.url)
    assert named.code == 0, named.stderr
    assert json.loads(named.stdout)["path"] == str(tmp_path / "camera.png")
    assert image_size(tmp_path / "camera.png") == ("PNG", (100, 80))
    default = await imgjobs("download", job_id, url=server.url, cwd=tmp_path)
    assert default.code == 0, default.stderr
    assert image_size(tmp_path / f"{job_id}.png") == ("PNG", (100, 80))
    piped = await imgjobs("download", job_id, "-o", "-", url=server.url)
    assert piped.code == 0, piped.stderr
    assert piped.output == (tmp_path / "camera.png").read_bytes()


async def test_submit_without_waiting_prints_the_job(server: RunningServer) -> None:
    run = await imgjobs("submit", CAMERA, "--format", "webp", url=server.url)
    assert run.code == 0, run.stderr
    [line] = run.lines()
    assert line["status"] == "pending"
    async with httpx.AsyncClient(base_url=server.url) as client:
        job = (await client.get(f"/jobs/{line['job_id']}", params={"wait": 30})).json()
    assert (job["status"], job["output_format"]) == ("completed", "webp")


async def test_a_spec_file_with_variants(server: RunningServer, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "variants": {
                    "thumb": {"steps": [{"op": "resize", "width": 64, "height": 64}]},
                    "wide": {
                        "steps": [{"op": "resize", "width": 300}],
                        "output": {"format": "webp"},
                    },
                }
            }
        )
    )
    out = tmp_path / "out"
    run = await imgjobs(
        "submit", ELEPHANTS, "--spec", spec, "--wait", "-o", f"{out}/", url=server.url
    )
    assert run.code == 0, run.stderr
    [line] = run.lines()
    assert line["saved"] == {
        "thumb": str(out / "mate__Elephants.thumb.jpg"),
        "wide": str(out / "mate__Elephants.wide.webp"),
    }
    assert image_size(out / "mate__Elephants.thumb.jpg") == ("JPEG", (64, 64))
    assert image_size(out / "mate__Elephants.wide.webp") == ("WEBP", (300, 169))


async def test_probe(server: RunningServer) -> None:
    run = await imgjobs("probe", ELEPHANTS, url=server.url)
    assert run.code == 0, run.stderr
    description = json.loads(run.stdout)
    assert (description["format"], description["width"], description["height"]) == (
        "JPEG", 1920, 1080,
    )  # fmt: skip


async def test_a_job_that_fails_exits_1(server: RunningServer) -> None:
    run = await imgjobs("submit", TRUNCATED, CAMERA, "--resize", "50x50", "--wait", url=server.url)
    assert run.code == 1
    by_file = {Path(line["file"]).name: line for line in run.lines()}
    assert by_file[CAMERA.name]["status"] == "completed"
    failed = by_file[TRUNCATED.name]
    assert (failed["status"], failed["error"]["code"]) == ("failed", "truncated_image")
    [message] = run.stderr.splitlines()
    assert message.startswith(f"imgjobs: {TRUNCATED}: job {failed['job_id']} failed")
    assert "truncated_image" in message


async def test_an_http_error_exits_3(server: RunningServer) -> None:
    run = await imgjobs("submit", NOT_AN_IMAGE, "--wait", url=server.url)
    assert run.code == 3
    [line] = run.lines()
    assert (line["status"], line["error"]["http_status"]) == ("error", 415)
    [message] = run.stderr.splitlines()
    assert "HTTP 415 unsupported_format" in message
    status = await imgjobs("status", "no-such-job", url=server.url)
    assert status.code == 3
    assert status.stderr.startswith("imgjobs: HTTP 404 not_found: ")
    assert len(status.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        ["submit", CAMERA, "--wait", "--url", closed_port_url()],
        ["status", "5d1f0c56-0b4a-4a9e-9a51-6a3c4f1d2e10", "--url", closed_port_url()],
        ["probe", CAMERA, "--url", closed_port_url()],
    ],
    ids=["submit", "status", "probe"],
)
async def test_an_unreachable_server_exits_3(command: list[str | Path]) -> None:
    run = await imgjobs(*command)
    assert run.code == 3
    [message] = run.stderr.splitlines()
    assert message.startswith("imgjobs: cannot reach http://127.0.0.1:")
    assert run.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["submit"],
        ["submit", "no-such-file.jpg"],
        ["submit", CAMERA, "--resize", "big"],
        ["submit", CAMERA, "--fit", "cover"],
        ["submit", CAMERA, "-o", "out"],
        ["submit", CAMERA, "--spec", ROOT / "pyproject.toml"],
        ["submit", CAMERA, "--concurrency", "0"],
        ["submit", CAMERA, STORM, "--wait", "-o", CAMERA.parent],
        ["submit", CAMERA, "--url", "localhost:8080"],
        ["submit", CAMERA, "--metadata", "{not json"],
        ["submit", CAMERA, "--metadata", "[1, 2]"],
        ["submit", CAMERA, "--callback-url", "ftp://hooks.example.com/x"],
        ["submit", CAMERA, STORM, "--idempotency-key", "k-1"],
        ["submit", CAMERA, "--idempotency-key", "x" * 256],
        ["frobnicate"],
    ],
)
async def test_bad_usage_exits_2(command: list[str | Path]) -> None:
    run = await imgjobs(*command)
    assert run.code == 2
    assert run.stderr.splitlines()[-1].startswith("imgjobs")
    assert "error: " in run.stderr
    assert "Traceback" not in run.stderr


async def test_on_a_terminal_it_draws_progress(server: RunningServer, tmp_path: Path) -> None:
    run = await imgjobs(
        "submit", ELEPHANTS, CAMERA, "--resize", "64x64", "--wait", "-o", tmp_path,
        url=server.url, TTY_COMPATIBLE="1", COLUMNS="120",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert "✓" in run.stdout
    assert "2 files: 2 completed" in run.stdout
    assert not any(line.startswith("{") for line in run.stdout.splitlines())
    assert image_size(tmp_path / "skimage__camera.png") == ("PNG", (64, 64))


async def test_metadata_must_be_a_json_object() -> None:
    for bad, reason in (("{not json", "not valid JSON"), ('"text"', "expected a JSON object")):
        run = await imgjobs("submit", CAMERA, "--metadata", bad)
        assert run.code == 2
        message = run.stderr.splitlines()[-1]
        assert "argument --metadata: " in message
        assert reason in message


async def test_a_callback_and_metadata_then_the_webhook_in_status(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "server", webhook_secret=SECRET, webhook_allow_private=True)
    async with (
        open_server(settings) as server,
        open_receiver(answer(204)) as receiver,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        callback = receiver.url.replace("hooks.test", "127.0.0.1")
        run = await imgjobs(
            "submit", CAMERA, "--resize", "64x64", "--metadata", '{"batch": 7, "tags": ["x"]}',
            "--callback-url", callback, "--wait", url=server.url,
        )  # fmt: skip
        assert run.code == 0, run.stderr
        [line] = run.lines()
        job_id = line["job_id"]
        with trio.fail_after(30):
            while (await client.get(f"/jobs/{job_id}")).json()["webhook"]["status"] != "delivered":
                await trio.sleep(0.05)
        piped = await imgjobs("status", job_id, url=server.url)
        terminal = await imgjobs(
            "status", job_id, url=server.url, TTY_COMPATIBLE="1", COLUMNS="200", NO_COLOR="1"
        )
    assert piped.code == 0, piped.stderr
    job = json.loads(piped.stdout)
    assert (job["metadata"], job["callback_url"]) == ({"batch": 7, "tags": ["x"]}, callback)
    assert job["webhook"] == {"status": "delivered", "attempts": 1, "last_status": "204"}
    assert "metadata" not in job["spec"]
    assert terminal.code == 0, terminal.stderr
    assert f"webhook to {callback}: delivered (1 attempt, last answer 204)" in terminal.stdout
    [(_, body)] = receiver.requests
    assert json.loads(body)["data"]["metadata"] == {"batch": 7, "tags": ["x"]}


async def test_a_spec_file_and_the_same_option_clash(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"steps": [{"op": "grayscale"}], "metadata": {"a": 1}}))
    run = await imgjobs("submit", CAMERA, "--spec", spec, "--metadata", '{"b": 2}')
    assert run.code == 2
    assert "leave out --metadata" in run.stderr


async def test_an_idempotency_key_answers_the_same_job(server: RunningServer) -> None:
    first = await imgjobs(
        "submit", CAMERA, "--format", "png", "--idempotency-key", "batch-9", url=server.url
    )
    again = await imgjobs(
        "submit", CAMERA, "--format", "png", "--idempotency-key", "batch-9", url=server.url
    )
    assert (first.code, again.code) == (0, 0), first.stderr + again.stderr
    [one], [two] = first.lines(), again.lines()
    assert two["job_id"] == one["job_id"]
    assert "replayed" not in one
    assert two["replayed"] is True
    other = await imgjobs(
        "submit", CAMERA, "--format", "webp", "--idempotency-key", "batch-9", url=server.url
    )
    assert other.code == 3
    [line] = other.lines()
    assert (line["error"]["http_status"], line["error"]["code"]) == (422, "idempotency_key_reused")
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert len((await client.get("/jobs")).json()["jobs"]) == 1


async def test_a_rate_limited_batch_is_retried_one_job_per_file(tmp_path: Path) -> None:
    """A rate of 1 a second (a burst of 2) and 4 files at once: two submits are answered
    429 at first, and retried after Retry-After until each file has its one job."""
    async with (
        open_server(make_settings(tmp_path / "server", rate_limit=1.0)) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        run = await imgjobs(
            "submit", *SMALL, "--format", "png", "--concurrency", "4", url=server.url
        )
        listing = (await client.get("/jobs", params={"limit": 100})).json()
        metrics = (await client.get("/metrics")).text
    assert (run.code, run.stderr) == (0, "")
    lines = run.lines()
    assert sorted(line["file"] for line in lines) == sorted(map(str, SMALL))
    assert {line["status"] for line in lines} == {"pending"}
    job_ids = {line["job_id"] for line in lines}
    assert len(job_ids) == 4
    assert {job["id"] for job in listing["jobs"]} == job_ids
    assert len(listing["jobs"]) == 4
    refused = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("imgjobs_requests_total{") and 'status="429"' in line
    ]
    assert sum(refused) >= 2

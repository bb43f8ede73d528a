"""GET /metrics against real servers: requests by route, jobs, durations, gauges, upload
bytes, the token, two apps in one process, and two server processes on one database."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import httpx
import PIL
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import BAD, GOOD
from tests.servers import ServerProcess, job_body, make_settings, open_server, submit

ELEPHANTS = GOOD / "mate__Elephants.jpg"
CAMERA = GOOD / "skimage__camera.png"
# Passes the header check at submit, fails in the worker: the data ends mid-scan.
TRUNCATED = BAD / "handmade__Storm_first_half.jpg"
JSON = {"Content-Type": "application/json"}


class Scrape:
    """One scrape of /metrics, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples: list[Sample] = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` with exactly these labels (0 if it is absent)."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples `name` whose labels include these."""
        return sum(
            s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()
        )


async def scrape(client: httpx.AsyncClient, token: str | None = None) -> Scrape:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


async def wait_done(client: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    response = await client.get(f"/jobs/{job_id}", params={"wait": "30"})
    assert response.status_code == 200, response.text
    job: dict[str, object] = response.json()
    assert job["status"] in ("completed", "failed"), job
    return job


async def submit_raw(client: httpx.AsyncClient, image: bytes) -> str:
    response = await client.post(
        "/jobs",
        params={"operation": "thumbnail", "width": "64", "height": "64"},
        content=image,
        headers={"Content-Type": "image/jpeg"},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def test_requests_are_counted_by_method_route_template_and_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_store(job_id: str) -> None:
        raise RuntimeError("the disk is on fire")

    async with (
        open_server(make_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/health")).status_code == 200
        assert (await client.get(f"/jobs/{uuid.uuid4()}")).status_code == 404
        assert (await client.get("/no/such/path")).status_code == 404
        bad = await client.post("/jobs", content=b"{not json", headers=JSON)
        assert bad.status_code == 400
        assert (await client.put("/health")).status_code == 405
        assert (await client.request("BREW", "/health")).status_code == 405
        with monkeypatch.context() as patch:
            patch.setattr(server.app.service.store, "get", broken_store)
            assert (await client.get(f"/jobs/{uuid.uuid4()}")).status_code == 500
        first = await scrape(client)
        second = await scrape(client)

    def requests(method: str, route: str, status: str) -> float:
        return first.value("imgjobs_requests_total", method=method, route=route, status=status)

    assert requests("GET", "/health", "200") == 2
    assert requests("GET", "/jobs/<job_id>", "404") == 1
    assert requests("GET", "unmatched", "404") == 1
    assert requests("POST", "/jobs", "400") == 1
    assert requests("PUT", "unmatched", "405") == 1
    assert requests("other", "unmatched", "405") == 1  # a method outside the standard set
    assert requests("GET", "/jobs/<job_id>", "500") == 1  # the opaque 500 of an unknown error
    assert first.total("imgjobs_requests_total") == 8  # a scrape counts once answered
    assert second.value("imgjobs_requests_total", method="GET", route="/metrics", status="200") == 1

    duration = "imgjobs_request_duration_seconds"
    assert first.value(f"{duration}_count", method="GET", route="/health") == 2
    assert first.value(f"{duration}_count", method="GET", route="/jobs/<job_id>") == 2
    assert first.value(f"{duration}_bucket", method="GET", route="/health", le="+Inf") == 2
    assert 0 < first.value(f"{duration}_sum", method="GET", route="/health") < 10
    # Routes are the app's URL rules, never a path a client chose.
    rules = {rule.rule for rule in server.app.url_map.iter_rules()} | {"unmatched"}
    routes = {s.labels["route"] for s in second.samples if "route" in s.labels}
    assert routes <= rules, routes - rules


async def test_jobs_durations_gauges_and_upload_bytes(tmp_path: Path) -> None:
    # One worker, so that jobs run one after the other and the last one (completed) leaves
    # the pool idle before the scrape.
    settings = make_settings(tmp_path, worker_pool_size=1, queue_size=7)
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        before = await scrape(client)
        bad_id = await submit(client, TRUNCATED)
        raw_id = await submit_raw(client, ELEPHANTS.read_bytes())
        json_id = await submit(client, CAMERA, width=64, height=64)
        # Neither a dry run nor a refused upload is an accepted upload.
        dry = await client.post(
            "/jobs?dry_run=true", content=job_body(CAMERA, width=64, height=64), headers=JSON
        )
        assert dry.status_code == 200, dry.text
        refused = await client.post(
            "/jobs?operation=resize&width=9&height=9",
            content=b"not an image at all",
            headers={"Content-Type": "image/jpeg"},
        )
        assert refused.status_code == 415, refused.text
        failed = await wait_done(client, bad_id)
        assert failed["status"] == "failed"
        assert (await wait_done(client, raw_id))["status"] == "completed"
        assert (await wait_done(client, json_id))["status"] == "completed"
        after = await scrape(client)

    assert before.value("imgjobs_jobs_total", status="completed", code="") == 0
    assert after.value("imgjobs_jobs_total", status="completed", code="") == 2
    error = failed["error"]
    assert isinstance(error, dict)
    assert after.value("imgjobs_jobs_total", status="failed", code=error["code"]) == 1
    assert after.total("imgjobs_jobs_total", status="failed") == 1

    duration = "imgjobs_job_duration_seconds"
    for phase in ("queue", "processing"):
        assert before.value(f"{duration}_count", phase=phase) == 0
        assert after.value(f"{duration}_count", phase=phase) == 3
        assert after.value(f"{duration}_bucket", phase=phase, le="+Inf") == 3
        assert after.value(f"{duration}_bucket", phase=phase, le="60.0") == 3
    assert 0 < after.value(f"{duration}_sum", phase="processing") < 60

    for scraped in (before, after):
        assert scraped.value("imgjobs_queue_capacity") == 7
        assert scraped.value("imgjobs_workers") == 1
        assert scraped.value("imgjobs_queue_depth") == 0
        assert scraped.value("imgjobs_workers_busy") == 0

    sent = sum(path.stat().st_size for path in (TRUNCATED, ELEPHANTS, CAMERA))
    assert before.value("imgjobs_upload_bytes_total") == 0
    assert after.value("imgjobs_upload_bytes_total") == sent

    for outcome in ("delivered", "failed", "retried"):  # no webhooks yet: there, at 0
        assert after.value("imgjobs_webhook_deliveries_total", outcome=outcome) == 0
    assert after.total("imgjobs_build_info", pillow=PIL.__version__) == 1
    assert after.total("process_resident_memory_bytes") > 0
    assert not [s for s in after.samples if s.name.endswith("_created")]


async def test_the_metrics_token_guards_metrics_and_nothing_else(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, metrics_token="s3cret")
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 401, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["code"] == "unauthorized"
            assert "imgjobs_" not in response.text
        assert (await client.get("/health")).status_code == 200
        metrics = await scrape(client, token="s3cret")
    requests = "imgjobs_requests_total"
    assert metrics.value(requests, method="GET", route="/metrics", status="401") == 3
    assert metrics.value(requests, method="GET", route="/health", status="200") == 1


async def test_two_apps_in_one_process_keep_their_numbers_apart(tmp_path: Path) -> None:
    one = make_settings(tmp_path / "one", worker_pool_size=2, queue_size=5)
    two = make_settings(tmp_path / "two", worker_pool_size=3, queue_size=9)
    async with open_server(one) as first, open_server(two) as second:
        async with httpx.AsyncClient(base_url=first.url) as client:
            job_id = await submit(client, ELEPHANTS, width=32, height=32)
            assert (await wait_done(client, job_id))["status"] == "completed"
            first_metrics = await scrape(client)
        async with httpx.AsyncClient(base_url=second.url) as client:
            second_metrics = await scrape(client)

    def both(name: str, **labels: str) -> tuple[float, float]:
        return first_metrics.value(name, **labels), second_metrics.value(name, **labels)

    assert both("imgjobs_jobs_total", status="completed", code="") == (1, 0)
    assert both("imgjobs_upload_bytes_total") == (ELEPHANTS.stat().st_size, 0)
    assert both("imgjobs_workers") == (2, 3)
    assert both("imgjobs_queue_capacity") == (5, 9)
    assert second_metrics.total("imgjobs_requests_total") == 0


async def test_two_server_processes_on_one_database_sum_to_the_jobs_run(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_pool_size=1, queue_size=20)
    images = [ELEPHANTS, TRUNCATED, ELEPHANTS, ELEPHANTS, TRUNCATED, ELEPHANTS, ELEPHANTS]
    servers = [ServerProcess(settings), ServerProcess(settings)]
    scrapes: list[Scrape] = []
    async with trio.open_nursery() as nursery:
        urls = [await server.start(nursery) for server in servers]
        clients = [httpx.AsyncClient(base_url=url) for url in urls]
        sent = [0, 0]
        submitted: list[tuple[int, str]] = []
        for number, image in enumerate(images):
            which = number % 2
            submitted.append((which, await submit(clients[which], image, width=48, height=48)))
            sent[which] += image.stat().st_size
        # Any process may run any job (a sweep takes pending rows): wait where it was sent.
        statuses = [
            (await wait_done(clients[which], job_id))["status"] for which, job_id in submitted
        ]
        assert statuses.count("failed") == images.count(TRUNCATED)
        for client in clients:
            scrapes.append(await scrape(client))
            await client.aclose()
        for server in servers:
            server.signal(signal.SIGTERM)
            assert await server.wait() == 0
            await server.wait_for("service.stopped")  # every line before it has been read

    def jobs(scraped: Scrape, status: str) -> float:
        return scraped.total("imgjobs_jobs_total", status=status)

    # Each process counts what it did, as its own log tells it...
    for server, scraped, uploaded in zip(servers, scrapes, sent, strict=True):
        assert jobs(scraped, "completed") == len(server.logged("job.finished"))
        assert jobs(scraped, "failed") == len(server.logged("job.failed"))
        assert scraped.value("imgjobs_upload_bytes_total") == uploaded
        assert scraped.value("imgjobs_workers") == 1
        assert scraped.value("imgjobs_queue_capacity") == 20
    # ...and the sums over the processes are the service's totals.
    assert sum(jobs(scraped, "completed") for scraped in scrapes) == statuses.count("completed")
    assert sum(jobs(scraped, "failed") for scraped in scrapes) == statuses.count("failed")
    for phase in ("queue", "processing"):
        counts = [s.value("imgjobs_job_duration_seconds_count", phase=phase) for s in scrapes]
        assert sum(counts) == len(images)
    assert all(jobs(scraped, "completed") + jobs(scraped, "failed") > 0 for scraped in scrapes)

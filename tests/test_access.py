"""API keys, limits, idempotency and result reuse over real HTTP, against a real server.

Key B reads key A's job by every route (404 each time, as for an unknown id); a burst over
the rate limit gets a 429 whose Retry-After is kept; concurrent submits with one
Idempotency-Key make one job; the same upload and document as a completed job complete at
once from its outputs.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import GOOD
from tests.servers import (
    ServerProcess,
    job_body,
    make_settings,
    open_server,
    submit_slow,
    wait_done,
    wait_started,
)
from tests.test_api import assert_problem as assert_message

ALICE = "alice-secret-0123456789"
BOB = "bob-secret-0123456789ab"
KEYS = f"alice:{ALICE},bob:{BOB}"
SMALL = GOOD / "pillow__pil123p.png"  # 162x150
PHOTO = GOOD / "plasma__Grey__2560x1600.jpg"
DOCUMENT = {"steps": [{"op": "resize", "width": 64}], "output": {"format": "webp"}}


def assert_code(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A problem+json answer with this status and code, and a message."""
    body = assert_message(response, status)
    assert body["code"] == code, body
    return body


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def document_body(image: Path, document: dict[str, Any] | None = None, **extra: Any) -> bytes:
    body = json.loads(job_body(image))
    for seed_field in ("operation", "width", "height"):
        del body[seed_field]
    return json.dumps({**body, **(document or DOCUMENT), **extra}).encode()


async def post_json(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        "/jobs", content=body, headers={"Content-Type": "application/json", **(headers or {})}
    )


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, api_keys=KEYS, worker_pool_size=1)
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


# --- API keys -----------------------------------------------------------------------------


async def test_without_a_valid_key_the_job_routes_answer_401_and_health_stays_open(
    keyed: httpx.AsyncClient,
) -> None:
    for headers, said in (
        ({}, "needs an API key"),
        (bearer("wrong-secret-0123456789"), "not valid"),
    ):
        for method, path in (("POST", "/jobs"), ("GET", "/jobs"), ("POST", "/probe")):
            response = await keyed.request(method, path, headers=headers, content=b"{}")
            assert_code(response, 401, "unauthorized")
            assert said in response.json()["error"]
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="imgjobs"'
    assert (await keyed.get("/health")).status_code == 200
    response = await post_json(keyed, job_body(SMALL), bearer(ALICE))
    assert response.status_code == 202, response.text


async def test_another_keys_job_is_404_on_every_route(keyed: httpx.AsyncClient) -> None:
    response = await post_json(keyed, document_body(SMALL), bearer(ALICE))
    job_id = response.json()["job_id"]
    async with httpx.AsyncClient(base_url=keyed.base_url, headers=bearer(ALICE)) as alice:
        assert (await wait_done(alice, job_id))["status"] == "completed"
    routes = [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}?wait=1"),
        ("GET", f"/jobs/{job_id}/download"),
        ("GET", f"/jobs/{job_id}/variants/default"),
        ("GET", f"/jobs/{job_id}/events"),
        ("DELETE", f"/jobs/{job_id}"),
    ]
    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path in routes:
        as_bob = await keyed.request(method, path, headers=bearer(BOB))
        assert_code(as_bob, 404, "not_found")
        # word for word what an unknown id gets: nothing tells Bob the job exists
        as_unknown = await keyed.request(method, path.replace(job_id, unknown), headers=bearer(BOB))
        assert as_bob.json()["error"] == as_unknown.json()["error"].replace(unknown, job_id)
    listing = await keyed.get("/jobs", headers=bearer(BOB))
    assert listing.json()["jobs"] == []
    # Alice still has it all (Bob's DELETE removed nothing)
    for _, path in routes[:5]:
        response = await keyed.get(path, headers=bearer(ALICE))
        assert response.status_code == 200, (path, response.text)
    listing = await keyed.get("/jobs", headers=bearer(ALICE))
    assert [job["id"] for job in listing.json()["jobs"]] == [job_id]


# --- limits -------------------------------------------------------------------------------


async def test_a_burst_over_the_rate_limit_gets_429_with_a_retry_after_that_holds(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, api_keys=KEYS, rate_limit=1.0)  # a burst of 2
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        answers = [await post_json(client, job_body(SMALL), bearer(ALICE)) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 429]
        assert answers[0].headers["RateLimit-Policy"] == '"submits";q=2;w=2'
        assert answers[0].headers["RateLimit"].startswith('"submits";r=1;')
        refused = answers[2]
        assert_code(refused, 429, "rate_limited")
        retry_after = int(refused.headers["Retry-After"])
        assert retry_after == 1  # one token comes back each second
        assert refused.headers["RateLimit"].startswith('"submits";r=0;')
        # the limit is per key: Bob is not slowed down by Alice
        response = await post_json(client, job_body(SMALL), bearer(BOB))
        assert response.status_code == 202
        # and Retry-After is a promise: after it, Alice may submit again
        await trio.sleep(retry_after)
        response = await post_json(client, job_body(SMALL), bearer(ALICE))
        assert response.status_code == 202, response.text


async def test_a_key_over_its_queued_jobs_gets_429_and_other_keys_do_not(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=KEYS, worker_pool_size=1, max_queued_per_key=2)
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, headers=bearer(ALICE)) as client,
    ):
        slow = await submit_slow(client)  # keeps the one worker busy for a good second
        await wait_started(client, slow)  # (not waiting itself: the limit counts waiting jobs)
        for _ in range(2):
            assert (await post_json(client, job_body(SMALL))).status_code == 202
        refused = await post_json(client, job_body(SMALL))
        assert_code(refused, 429, "too_many_queued")
        assert "MAX_QUEUED_PER_KEY" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1
        response = await post_json(client, job_body(SMALL), bearer(BOB))
        assert response.status_code == 202


# --- idempotency --------------------------------------------------------------------------


async def test_a_retry_with_the_same_idempotency_key_answers_the_first_job(
    keyed: httpx.AsyncClient,
) -> None:
    headers = bearer(ALICE) | {"Idempotency-Key": "order-1234"}
    first = await post_json(keyed, job_body(SMALL), headers)
    # the same request again, spelled differently (JSON spacing): the same request
    spaced = json.dumps(json.loads(job_body(SMALL)), indent=2).encode()
    again = await post_json(keyed, spaced, headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    # another request under the same key is refused, naming the problem
    other = await post_json(keyed, job_body(SMALL, width=100), headers)
    assert_code(other, 422, "idempotency_key_reused")
    # keys are per API key: Bob's "order-1234" is his own
    bobs = await post_json(keyed, job_body(SMALL), bearer(BOB) | {"Idempotency-Key": "order-1234"})
    assert bobs.status_code == 202
    assert bobs.json()["job_id"] != first.json()["job_id"]
    listing = await keyed.get("/jobs", headers=bearer(ALICE))
    assert len(listing.json()["jobs"]) == 1


@pytest.mark.parametrize("form", ["json", "raw", "multipart"])
async def test_concurrent_submits_with_one_idempotency_key_make_one_job(
    keyed: httpx.AsyncClient, form: str
) -> None:
    headers = bearer(ALICE) | {"Idempotency-Key": f"same-{form}"}
    image = SMALL.read_bytes()
    answers: list[httpx.Response] = []

    async def post() -> None:
        if form == "json":
            answers.append(await post_json(keyed, job_body(image), headers))
        elif form == "raw":
            params = {"operation": "resize", "width": "200", "height": "200"}
            raw = headers | {"Content-Type": "image/png"}
            answers.append(await keyed.post("/jobs", params=params, content=image, headers=raw))
        else:
            data = {"operation": "resize", "width": "200", "height": "200"}
            files = {"image": ("a.png", image, "image/png")}
            answers.append(await keyed.post("/jobs", data=data, files=files, headers=headers))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(post)
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 7
    listing = await keyed.get("/jobs", headers=bearer(ALICE))
    assert len(listing.json()["jobs"]) == 1


async def test_an_idempotency_key_must_be_1_to_255_printable_characters(
    keyed: httpx.AsyncClient,
) -> None:
    for key in ("x" * 256, "tab\there"):
        response = await post_json(keyed, job_body(SMALL), bearer(ALICE) | {"Idempotency-Key": key})
        assert_code(response, 400, "invalid_field")
        assert "Idempotency-Key" in response.json()["error"]


# --- result reuse -------------------------------------------------------------------------


async def test_the_same_upload_and_document_complete_at_once_from_the_first_jobs_outputs(
    keyed: httpx.AsyncClient,
) -> None:
    keyed.headers.update(bearer(ALICE))
    first = (await post_json(keyed, document_body(PHOTO))).json()["job_id"]
    done = await wait_done(keyed, first)
    assert done["status"] == "completed"
    assert "reused" not in done
    original = (await keyed.get(f"/jobs/{first}/download")).content
    answer = await post_json(keyed, document_body(PHOTO))
    assert answer.status_code == 202
    assert answer.json()["status"] == "completed"  # no queue, no worker
    second = answer.json()["job_id"]
    view = (await keyed.get(f"/jobs/{second}")).json()
    assert view["status"] == "completed"
    assert view["reused"] is True
    assert view["variants"]["default"] | {"download": ""} == done["variants"]["default"] | {
        "download": ""
    }
    # its own copy: the first job's deletion leaves it whole
    assert (await keyed.delete(f"/jobs/{first}")).status_code == 204
    assert (await keyed.get(f"/jobs/{second}/download")).content == original
    # another document, another key, or the seed's form: processed as usual
    other = document_body(PHOTO, {"steps": [{"op": "resize", "width": 65}]})
    assert (await post_json(keyed, other)).json()["status"] == "pending"
    bobs = await post_json(keyed, document_body(PHOTO), bearer(BOB))
    assert bobs.json()["status"] == "pending"
    seed = [await post_json(keyed, job_body(SMALL)) for _ in range(2)]
    await wait_done(keyed, seed[0].json()["job_id"])
    again = await post_json(keyed, job_body(SMALL))
    assert again.json()["status"] == "pending"  # the seed's answers stay the seed's


# --- metadata and callback validation -----------------------------------------------------


async def test_metadata_is_kept_with_the_job_and_bounded(keyed: httpx.AsyncClient) -> None:
    keyed.headers.update(bearer(ALICE))
    metadata = {"order": 1234, "tags": ["a", "b"], "customer": {"id": "c_9"}}
    job_id = (await post_json(keyed, document_body(SMALL, metadata=metadata))).json()["job_id"]
    assert (await keyed.get(f"/jobs/{job_id}")).json()["metadata"] == metadata
    seed = (await post_json(keyed, job_body(SMALL, metadata=metadata))).json()["job_id"]
    assert (await keyed.get(f"/jobs/{seed}")).json()["metadata"] == metadata
    huge = document_body(SMALL, metadata={"blob": "x" * 9000})
    response = await post_json(keyed, huge)
    assert_code(response, 400, "invalid_field")
    assert "`metadata`" in response.json()["error"]
    not_object = document_body(SMALL, metadata=[1, 2])
    assert_code(await post_json(keyed, not_object), 400, "invalid_field")


FORBIDDEN = [
    "ftp://hooks.example.com/x",
    "file:///etc/passwd",
    "http://127.0.0.1/hook",
    "http://127.1/hook",
    "http://0x7f000001/hook",
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::7f00:1]/hook",  # NAT64 of 127.0.0.1
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.5/hook",
    "http://192.168.1.1/hook",
    "http://[fd00::1]/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://0.0.0.0/hook",
    "http://localhost:8080/hook",  # a name that resolves to loopback
    "http://user:password@hooks.example.com/hook",
]


@pytest.fixture
async def hooked(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


@pytest.mark.parametrize("url", FORBIDDEN)
async def test_a_callback_to_a_forbidden_address_is_400_at_submit(
    hooked: httpx.AsyncClient, url: str
) -> None:
    for body in (document_body(SMALL, callback_url=url), job_body(SMALL, callback_url=url)):
        response = await post_json(hooked, body)
        assert_code(response, 400, "invalid_field")
        assert "`callback_url`" in response.json()["error"]
    listing = await hooked.get("/jobs")
    assert listing.json()["jobs"] == []  # nothing was created


async def test_without_a_webhook_secret_a_callback_is_refused_saying_why(tmp_path: Path) -> None:
    async with (
        open_server(make_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        body = document_body(SMALL, callback_url="https://hooks.example.com/x")
        response = await post_json(client, body)
        assert_code(response, 400, "invalid_field")
        assert "WEBHOOK_SECRET" in response.json()["error"]


async def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    hook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    wrong = "guessed-secret-0123456789"
    settings = make_settings(tmp_path, api_keys=KEYS, webhook_secret=hook_secret)
    server = ServerProcess(settings, extra_env={"LOG_LEVEL": "DEBUG"})
    async with trio.open_nursery() as nursery:
        url = await server.start(nursery)
        async with httpx.AsyncClient(base_url=url) as client:
            accepted = await post_json(client, job_body(SMALL), bearer(ALICE))
            assert accepted.status_code == 202
            assert (await post_json(client, job_body(SMALL), bearer(wrong))).status_code == 401
            assert (await client.get("/jobs", headers=bearer(BOB))).status_code == 200
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    logged = json.dumps(server.events)
    assert "alice" in logged  # keys are known by their names
    for secret in (ALICE, BOB, wrong, hook_secret, hook_secret.removeprefix("whsec_")):
        assert secret not in logged

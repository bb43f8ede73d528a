"""The API description: valid OpenAPI 3.1, one entry per route, the docs page, and live checks."""

from __future__ import annotations

import base64
import importlib.metadata
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import jsonschema_rs
import msgspec
import pytest
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.access import guarded
from app.delivery_store import DeliveryRecord
from app.docs import ASSET_TYPES, EXAMPLES, INIT_SCRIPT, openapi_document, swagger_ui_folder
from app.models import IDEMPOTENCY_KEY_LENGTH
from app.openapi import DOCS_MEDIA_TYPES, KEYED, ROUTES, WIRE_TYPES
from app.openapi_components import PARAMETERS
from app.server import create_app
from app.views import event_body
from app.webhooks import Signer, new_webhook_id
from tests.conftest import BAD, GOOD
from tests.fakes import record
from tests.servers import ServerProcess, job_body, make_settings, open_server

ADMIN_TOKEN = "openapi-admin"
API_KEY = "alice-secret-0123456789"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 25
REQUEST_TIMEOUT_S = 30.0
FUZZ_DEADLINE_S = 300.0
PHOTO = GOOD / "mate__Elephants.jpg"
TRUNCATED = BAD / "handmade__Storm_first_half.jpg"  # accepted at submit, fails in the worker
UPLOAD_LIMIT = 4 * 1024 * 1024
JSON = {"Content-Type": "application/json"}
_RULE_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def registered_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every rule the app serves; HEAD and OPTIONS come free."""
    app = create_app(make_settings(tmp_path))
    return {
        (method, _RULE_ARGUMENT.sub(r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "imgjobs"
    assert document["info"]["version"] == importlib.metadata.version("imgjobs")
    assert document["servers"] == [{"url": "/"}]
    operations = [
        operation
        for items in (*document["paths"].values(), *document["webhooks"].values())
        for operation in items.values()
    ]
    assert {tag["name"] for tag in document["tags"]} == {t for o in operations for t in o["tags"]}


def test_every_route_is_declared_once_and_nothing_else(tmp_path: Path) -> None:
    declared = [(route.method, route.path) for route in ROUTES]
    assert len(declared) == len(set(declared))
    registered = registered_routes(tmp_path)
    assert registered - set(declared) == set(), "routes missing from app/openapi.py"
    assert set(declared) - registered == set(), "declared routes the app lacks"
    assert len({route.operation_id for route in ROUTES}) == len(ROUTES)
    assert {name for route in ROUTES for name in route.parameters} <= set(PARAMETERS)


def test_the_schemas_are_the_wire_types_own() -> None:
    schemas = openapi_document()["components"]["schemas"]
    generated = msgspec.json.schema_components(
        [t for t in WIRE_TYPES if isinstance(t, type)], ref_template="#/components/schemas/{name}"
    )[1]
    for name in ("JobView", "Problem", "Description", "Health", "PoolResize", "SubmitRequest"):
        assert schemas[name] == generated[name]
    step = schemas["Step"]
    assert step["discriminator"]["propertyName"] == "op"
    assert set(step["discriminator"]["mapping"]) >= {"resize", "crop", "rotate", "watermark"}
    # The union is named once and referred to wherever a list of steps is.
    assert schemas["Variant"]["properties"]["steps"]["items"] == {
        "$ref": "#/components/schemas/Step"
    }


def test_every_error_answer_is_a_problem() -> None:
    document = openapi_document()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            statuses = {int(status) for status in operation["responses"]}
            assert 500 in statuses, (method, path)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["$ref"].startswith("#/components/responses/"), (method, path)
    responses = document["components"]["responses"]
    for response in responses.values():
        assert response["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    assert set(responses["ServiceUnavailable"]["headers"]) == {"Retry-After"}
    assert set(responses["Unauthorized"]["headers"]) == {"WWW-Authenticate"}
    assert set(responses["MethodNotAllowed"]["headers"]) == {"Allow"}


def schema_validator(document: dict[str, Any], pointer: str) -> jsonschema_rs.Validator:
    """A JSON Schema validator of the document's schema at `pointer` (its references
    resolved within the document)."""
    return jsonschema_rs.Draft202012Validator({**document, "$ref": f"#{pointer}"})


def test_the_job_routes_take_an_api_key_where_the_server_asks_for_one() -> None:
    document = openapi_document()
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "API_KEYS" in scheme["description"]
    assert "API_KEYS_FILE" in scheme["description"]
    keyed = set()
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        security = operation.get("security", [])
        # As app.access decides it, for a concrete path of the route.
        if guarded(re.sub(r"{\w+}", "x", route.path)):
            keyed.add(route.path)
            assert security == [{"bearerAuth": []}, {}] == list(KEYED), route.path
            assert operation["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
        else:
            assert all("bearerAuth" not in requirement for requirement in security), route.path
    assert {path for path in keyed if not path.startswith("/jobs")} == {"/probe"}
    assert len(keyed) == 6  # /jobs, /jobs/{job_id} and below, /probe
    paths = document["paths"]
    assert paths["/metrics"]["get"]["security"] == [{}, {"metricsToken": []}]
    for path in ("/health", "/docs", "/", "/openapi.json"):
        assert "security" not in paths[path]["get"], path


def test_a_submit_documents_its_key_its_limits_and_its_replays() -> None:
    document = openapi_document()
    components = document["components"]
    submit = document["paths"]["/jobs"]["post"]
    assert {"$ref": "#/components/parameters/Idempotency-Key"} in submit["parameters"]
    key = components["parameters"]["Idempotency-Key"]
    assert key["in"] == "header"
    assert key["schema"] == {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_LENGTH}
    assert key.get("required", False) is False
    assert submit["responses"]["429"] == {"$ref": "#/components/responses/TooManyRequests"}
    too_many = components["responses"]["TooManyRequests"]
    assert set(too_many["headers"]) == {"Retry-After", "RateLimit-Policy", "RateLimit"}
    for code in ("rate_limited", "too_many_queued"):
        assert code in too_many["description"]
    unprocessable = components["responses"]["UnprocessableContent"]
    assert "idempotency_key_reused" in unprocessable["description"]
    headers = components["headers"]
    # Sent only when RATE_LIMIT is set (on a 429 `too_many_queued`, never): not required.
    for name in ("RateLimit-Policy", "RateLimit", "Idempotent-Replayed"):
        assert headers[name]["required"] is False, name
    assert headers["Retry-After"]["required"] is True
    accepted = submit["responses"]["202"]["headers"]
    assert set(accepted) == {"Location", "Idempotent-Replayed", "RateLimit-Policy", "RateLimit"}
    # Every body names its callback and may carry metadata.
    schemas = components["schemas"]
    for name in ("JobDocument", "JobRequest", "SubmitRequest"):
        assert {"callback_url", "metadata"} <= set(schemas[name]["properties"]), name
    assert "callback_url" in schemas["UploadParameters"]["properties"]
    form = submit["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["spec"]["contentSchema"] == {"$ref": "#/components/schemas/JobDocument"}
    assert "callback_url" in form
    spec = components["parameters"]["spec"]
    assert spec["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobDocument"
    }
    assert "callback_url" in spec["description"]
    assert "metadata" in spec["description"]
    view = schemas["JobView"]["properties"]
    assert {"callback_url", "metadata", "webhook", "reused"} <= set(view)
    assert view["webhook"]["anyOf"][0] == {"$ref": "#/components/schemas/WebhookView"}


def test_the_webhook_is_described_as_it_is_sent() -> None:
    document = openapi_document()
    assert set(document["webhooks"]) == {"jobEnded"}
    post = document["webhooks"]["jobEnded"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/WebhookEvent"}
    generated = msgspec.json.schema_components(
        [t for t in WIRE_TYPES if isinstance(t, type)], ref_template="#/components/schemas/{name}"
    )[1]
    assert document["components"]["schemas"]["WebhookEvent"] == generated["WebhookEvent"]
    assert set(post["responses"]) == {"2XX", "default"}
    parameters = {p["name"]: p for p in post["parameters"]}
    assert set(parameters) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert all(p["in"] == "header" and p["required"] for p in parameters.values())
    # What the service really sends conforms: a signed event of a completed job.
    job = record(
        "7e2c4b9e-0000-4000-8000-000000000000",
        status="completed",
        callback_url="https://hooks.example.com/imgjobs",
        metadata=b'{"order": "A-1234"}',
        finished_at=1_750_000_000.0,
    )
    delivery = DeliveryRecord(
        job_id=job.id,
        webhook_id=new_webhook_id(),
        url="https://hooks.example.com/imgjobs",
        event="job.completed",
        status="pending",
        created_at=1_750_000_000.0,
        updated_at=1_750_000_000.0,
    )
    payload = event_body(job, delivery)
    schema_validator(document, "/components/schemas/WebhookEvent").validate(
        msgspec.json.decode(payload)
    )
    sent = Signer(WEBHOOK_SECRET).headers(delivery.webhook_id, 1_750_000_001, payload)
    assert set(sent) == set(parameters)
    for name, value in sent.items():
        schema = parameters[name]["schema"]
        jsonschema_rs.validate(schema, int(value) if schema["type"] == "integer" else value)


class _References(HTMLParser):
    """Every URL an HTML page refers to (src, href)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, admin_token=ADMIN_TOKEN, max_upload_bytes=UPLOAD_LIMIT)
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def test_the_docs_page_loads_only_its_own_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for external in ("http:", "https:", "//"):  # no CDN, no absolute or protocol-relative URL
        assert external not in page.text
    parser = _References()
    parser.feed(page.text)
    assert len(parser.urls) == 4
    expected = {name: kind.partition(";")[0] for name, kind in ASSET_TYPES.items()}
    expected[INIT_SCRIPT] = "text/javascript"
    assert set(expected.values()) == set(DOCS_MEDIA_TYPES)  # as the document declares them
    for url in parser.urls:
        assert url.startswith("/docs/assets/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        name = url.removeprefix("/docs/assets/")
        assert asset.headers["content-type"].partition(";")[0] == expected[name]
        if name in ASSET_TYPES:  # the sidecar's file, as shipped
            assert asset.content == (swagger_ui_folder() / name).read_bytes()
    init = await client.get(f"/docs/assets/{INIT_SCRIPT}")
    assert 'url: "/openapi.json"' in init.text
    assert "validatorUrl: null" in init.text  # Swagger UI would call validator.swagger.io


async def test_docs_assets_are_a_fixed_list(client: httpx.AsyncClient) -> None:
    for name in ("LICENSE", "index.html", "..%2F..%2F__init__.py", "swagger-ui-bundle.js.map"):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"] == "application/problem+json"
    css = await client.get("/docs/assets/swagger-ui.css")
    again = await client.get(
        "/docs/assets/swagger-ui.css", headers={"If-None-Match": css.headers["etag"]}
    )
    assert again.status_code == 304


async def test_the_served_document_is_the_built_one(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == msgspec.json.decode(msgspec.json.encode(openapi_document()))


class Conformance:
    """Checks real answers against the document, with schemathesis' checks."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.schema = schemathesis.openapi.from_dict(openapi_document())
        self.seen: set[tuple[str, str, int]] = set()

    async def __call__(self, method: str, path: str, status: int, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        self.check(response)
        return response

    def check(self, response: httpx.Response) -> None:
        """Hold one answer to the document's operation for its request."""
        method, path = response.request.method, response.request.url.path
        for route in ROUTES:
            pattern = re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", route.path)
            match = re.fullmatch(pattern, path)
            if route.method == method and match is not None:
                break
        else:
            raise AssertionError(f"{method} {path} is not in the document")
        response.request.read()  # a multipart body streams; schemathesis reads it
        case = self.schema[route.path][method].Case(path_parameters=match.groupdict())
        case.validate_response(response, checks=CHECKS)
        self.seen.add((method, route.path, response.status_code))


async def wait_completed(conform: Conformance, job_id: str) -> dict[str, Any]:
    with trio.fail_after(60):
        job: dict[str, Any] = (await conform("GET", f"/jobs/{job_id}?wait=30", 200)).json()
    assert job["status"] == "completed", job
    return job


async def test_real_answers_conform_to_the_document(client: httpx.AsyncClient) -> None:
    conform = Conformance(client)
    for example in EXAMPLES["submitJob"].values():
        await conform("POST", "/jobs?dry_run=true", 200, json=example["value"])
        submitted = await conform("POST", "/jobs", 202, json=example["value"])
        job = await wait_completed(conform, submitted.json()["job_id"])
    assert job["variants"]["default"]["format"] == "webp"
    photo = PHOTO.read_bytes()
    raw = await conform(
        "POST",
        "/jobs?operation=thumbnail&width=64&height=64",
        202,
        content=photo,
        headers={"Content-Type": "image/jpeg"},
    )
    form = {"spec": '{"steps": [{"op": "resize", "width": 48}], "output": {"format": "png"}}'}
    await conform("POST", "/jobs", 202, files={"image": photo}, data=form)
    job_id = raw.json()["job_id"]
    await wait_completed(conform, job_id)
    download = await conform("GET", f"/jobs/{job_id}/download", 200)
    etag = {"If-None-Match": download.headers["etag"]}
    await conform("GET", f"/jobs/{job_id}/download", 304, headers=etag)
    await conform("GET", f"/jobs/{job_id}/variants/default", 200)
    await conform("GET", f"/jobs/{job_id}/variants/small", 404)
    await conform("GET", f"/jobs/{job_id}?wait=600", 400)
    await conform("GET", f"/jobs/{job_id}/events", 200)  # completed: one event, then the end
    await conform("GET", "/jobs/7e2c4b9e-0000-4000-8000-000000000000/events", 404)
    listed = await conform("GET", "/jobs?limit=1", 200)
    await conform("GET", f"/jobs?limit=1&cursor={listed.json()['next_cursor']}", 200)
    await conform("GET", "/jobs?status=done", 400)
    await conform("DELETE", f"/jobs/{job_id}", 204)
    await conform("GET", f"/jobs/{job_id}", 404)
    failed = await conform("POST", "/jobs", 202, content=job_body(TRUNCATED), headers=JSON)
    failed_id = failed.json()["job_id"]
    with trio.fail_after(60):
        view = await conform("GET", f"/jobs/{failed_id}?wait=30", 200)
    assert view.json()["status"] == "failed"
    await conform("GET", f"/jobs/{failed_id}/download", 409)
    await conform("POST", "/probe", 200, json=EXAMPLES["probeUpload"]["image"]["value"])
    await conform("POST", "/probe", 200, content=photo, headers={"Content-Type": "image/jpeg"})
    await conform("POST", "/probe", 200, files={"image": photo})
    await conform("POST", "/probe", 415, content=b"hello", headers={"Content-Type": "image/png"})
    await conform("POST", "/jobs", 415, content=b"hello", headers={"Content-Type": "text/plain"})
    too_big = base64.b64encode(bytes(UPLOAD_LIMIT + 1024)).decode()
    await conform("POST", "/probe", 413, json={"image_data": too_big})
    await conform("GET", "/health", 200)
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    await conform("GET", "/admin/pool", 200, headers=bearer)
    await conform("GET", "/admin/pool", 401)
    await conform("PUT", "/admin/pool", 200, headers=bearer, json={"size": 2})
    await conform("PUT", "/admin/pool", 400, headers=bearer, json={"size": 0})
    await conform("GET", "/openapi.json", 200)
    await conform("GET", "/docs", 200)
    await conform("GET", f"/docs/assets/{INIT_SCRIPT}", 200)
    page = await conform("GET", "/", 200)
    static = re.search(r'"(/static/[^"?]+)', page.text)
    assert static is not None
    await conform("GET", static.group(1), 200)
    await conform("GET", "/static/nothing-here.js", 404)
    await conform("GET", "/metrics", 200)
    covered = {(method, path) for method, path, _ in conform.seen}
    assert covered == {(route.method, route.path) for route in ROUTES}


async def test_idempotent_submits_conform_to_the_document(client: httpx.AsyncClient) -> None:
    conform = Conformance(client)
    example = EXAMPLES["submitJob"]["seed"]["value"]
    key = {"Idempotency-Key": "order-A-1234"}
    first = await conform("POST", "/jobs", 202, json=example, headers=key)
    assert "idempotent-replayed" not in first.headers
    again = await conform("POST", "/jobs", 202, json=example, headers=key)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["job_id"] == first.json()["job_id"]
    other = await conform("POST", "/jobs", 422, json={**example, "width": 33}, headers=key)
    assert other.json()["code"] == "idempotency_key_reused"
    too_long = {"Idempotency-Key": "k" * (IDEMPOTENCY_KEY_LENGTH + 1)}
    await conform("POST", "/jobs", 400, json=example, headers=too_long)


async def test_a_server_with_api_keys_answers_as_documented(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=f"alice:{API_KEY}", rate_limit=1.0)
    problem = schema_validator(openapi_document(), "/components/schemas/Problem")
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        conform = Conformance(client)
        unknown = "7e2c4b9e-0000-4000-8000-000000000000"
        wrong = {"Authorization": "Bearer not-a-key-of-this-server"}
        for route in ROUTES:
            if route.security != KEYED:
                continue
            path = route.path.format(job_id=unknown, name="default")
            for headers in ({}, wrong):
                refused = await conform(route.method, path, 401, headers=headers)
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.headers["www-authenticate"] == 'Bearer realm="imgjobs"'
                assert refused.json()["code"] == "unauthorized"
                problem.validate(refused.json())
        # A burst of submits: the first ones spend the quota (burst 2 at 1 a second).
        alice = {"Authorization": f"Bearer {API_KEY}"}
        example = EXAMPLES["submitJob"]["seed"]["value"]
        accepted: list[str] = []
        for _ in range(10):
            response = await client.post("/jobs", json=example, headers=alice)
            conform.check(response)
            if response.status_code == 429:
                break
            assert response.status_code == 202, response.text
            assert {"ratelimit-policy", "ratelimit"} <= set(response.headers)
            accepted.append(response.json()["job_id"])
        else:
            raise AssertionError("ten submits in a row, none limited")
        assert accepted
        assert response.headers["content-type"] == "application/problem+json"
        assert {"retry-after", "ratelimit-policy", "ratelimit"} <= set(response.headers)
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["code"] == "rate_limited"
        problem.validate(response.json())
        await conform("GET", f"/jobs/{accepted[0]}", 200, headers=alice)
    assert {status for _, _, status in conform.seen} == {200, 202, 401, 429}


async def test_an_unanswered_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.request("PATCH", "/health")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].split(", ")) >= {"GET", "HEAD"}


async def test_a_late_body_of_a_get_leaves_the_connection_usable(tmp_path: Path) -> None:
    body = b'{"x": 1}'
    head = f"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
    server = ServerProcess(make_settings(tmp_path))  # its own process: the fault stays there
    async with trio.open_nursery() as nursery:
        host, _, port = (await server.start(nursery)).removeprefix("http://").partition(":")
        try:
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(head.encode())
                assert (await read_status(stream)).startswith(b"HTTP/1.1 200")
                second: bytes | None = None
                try:
                    await stream.send_all(body)  # after the answer
                    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                    with trio.move_on_after(2):
                        second = await read_status(stream)
                except trio.BrokenResourceError:
                    second = b""  # closed by the server
        finally:
            server.signal(signal.SIGTERM)
            await server.wait()
    # An answer, or the connection closed (the client then retries): never left hanging.
    assert second is not None, "the connection was left open, unanswered"
    assert second in (b"", b"HTTP/1.1 200 "), second


async def read_status(stream: trio.SocketStream) -> bytes:
    """The status line of the next response on `stream` (its body read too); b"" at its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            return b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    while length is not None and len(rest) < int(length.group(1)):
        rest += await stream.receive_some()
    return head.partition(b"\r\n")[0]


class FuzzReport(NamedTuple):
    operations: list[str]
    statuses: Counter[tuple[str, int]]
    failures: list[str]


FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    derandomize=True,  # the same cases every run: no flaky failures
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


def fuzz(base_url: str) -> FuzzReport:
    """Every operation of the served document: its examples, then MAX_EXAMPLES cases, valid
    and invalid, sent by schemathesis and checked with CHECKS (blocking: run it in a thread).

    Only the declared operations: schemathesis' coverage phase also sends undeclared methods
    with a body (`PUT /probe`, `GET /probe` with JSON), which meet a fault of hypercorn under
    quart-trio (test_a_late_body_of_a_get_leaves_the_connection_usable) and time out.
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    report = FuzzReport([], Counter(), [])
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if not isinstance(result, Ok):
                report.failures.append(f"an operation schemathesis cannot load: {result.err()}")
                continue
            operation = result.ok()
            report.operations.append(operation.label)
            # The document's own examples first, once each; then generated cases.
            runs = [(example, 1) for example in operation.get_strategies_from_examples()]
            generated = st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            )
            runs.append((generated, MAX_EXAMPLES))
            for cases, max_examples in runs:
                try:
                    _fuzz_operation(cases, max_examples, session, report)()
                except Exception as exc:  # one report for all operations, not the first failure
                    report.failures.append(f"{operation.label}: {exc}")
    return report


def _fuzz_operation(
    cases: st.SearchStrategy[schemathesis.Case[Any]],
    max_examples: int,
    session: requests.Session,
    report: FuzzReport,
) -> Callable[[], None]:
    @settings(FUZZ_SETTINGS, max_examples=max_examples)
    @given(case=cases, authorized=st.booleans())
    def run(case: schemathesis.Case[Any], authorized: bool) -> None:
        if authorized:  # else whatever schemathesis sends: none, or a made-up token
            case.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        response = case.call_and_validate(session=session, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)
        report.statuses[(case.operation.label, response.status_code)] += 1

    return run


async def test_schemathesis_finds_nothing_against_a_live_server(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin_token=ADMIN_TOKEN, worker_pool_size=1)
    server = ServerProcess(settings)
    async with trio.open_nursery() as nursery:
        url = await server.start(nursery)
        try:
            # Abandoned at the deadline: stopping the server then ends its requests at once.
            with trio.fail_after(FUZZ_DEADLINE_S):
                report = await trio.to_thread.run_sync(fuzz, url, abandon_on_cancel=True)
        finally:
            server.signal(signal.SIGTERM)
            await server.wait()
    assert not report.failures, "\n\n".join(report.failures)
    # Schemathesis leaves out the operation that serves the document it loaded.
    expected = {f"{route.method} {route.path}" for route in ROUTES}
    assert set(report.operations) == expected - {"GET /openapi.json"}
    assert {label for label, _ in report.statuses} == set(report.operations)
    # Not only refusals: the documented examples and generated images get through.
    assert report.statuses[("POST /jobs", 202)] > 0
    assert report.statuses[("POST /probe", 200)] > 0

"""The API description served: OpenAPI 3.1 at /openapi.json, Swagger UI at /docs (no CDN)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
from quart import Blueprint, Response, request, send_file

from app.errors import NotFound
from app.openapi import LINK_VALUES, ROUTES, UNION_NAMES, WIRE_TYPES, Route
from app.openapi_components import (
    ERRORS,
    HEADERS,
    PARAMETERS,
    SECURITY_SCHEMES,
    WEBHOOKS,
    Schema,
    ref,
)

__all__ = ["blueprint", "openapi_document", "openapi_json", "swagger_ui_folder"]

blueprint = Blueprint("docs", __name__)

PROBLEM_JSON: Final = "application/problem+json"

# Swagger UI's files, as the sidecar package ships them: name -> content type.
ASSET_TYPES: Final = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "swagger-ui.css.map": "application/json",
    "favicon-32x32.png": "image/png",
}
ASSET_MAX_AGE_S: Final = 24 * 3600
SIDECAR_PACKAGE: Final = "drf_spectacular_sidecar"
INIT_SCRIPT: Final = "docs.js"
# Its own file rather than an inline script: a Content-Security-Policy can then say 'self'.
INIT_JS: Final = b"""\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
  });
});
"""
PAGE: Final = b"""\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>imgjobs API</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/docs.js"></script>
</body>
</html>
"""
# Swagger UI sets inline styles and shows data: images; everything else is this server's.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

TAGS: Final = (
    {"name": "jobs", "description": "Submit images, follow jobs, download their outputs."},
    {"name": "service", "description": "Health and metrics."},
    {"name": "admin", "description": "Operate the service (needs ADMIN_TOKEN)."},
    {"name": "web", "description": "The web page and its files."},
    {"name": "docs", "description": "This description, as JSON and as a page."},
    {"name": "webhooks", "description": "What the service sends to a job's `callback_url`."},
)

#: An 8x8 PNG, so that the examples (and "Try it out") make real jobs.
EXAMPLE_IMAGE: Final = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8EaDBgA0wMeAAg1MCAP8oAVCG"
    "kvfKAAAAAElFTkSuQmCC"
)
EXAMPLES: Final[dict[str, dict[str, Schema]]] = {
    "submitJob": {
        "seed": {
            "summary": "the seed's five fields",
            "value": {
                "image_data": EXAMPLE_IMAGE,
                "operation": "resize",
                "width": 32,
                "height": 24,
            },
        },
        "document": {
            "summary": "a job document",
            "value": {
                "image_data": EXAMPLE_IMAGE,
                "steps": [{"op": "resize", "width": 32, "height": 32, "fit": "contain"}],
                "output": {"format": "webp", "quality": 80},
                "metadata": {"order": "A-1234"},
            },
        },
    },
    "probeUpload": {"image": {"summary": "an 8x8 PNG", "value": {"image_data": EXAMPLE_IMAGE}}},
    "resizePool": {"two": {"summary": "two workers", "value": {"size": 2}}},
}

DESCRIPTION: Final = """\
An asynchronous image-processing service: submit an image and what to make of it, get a job
id at once (`202`), follow the job, download its outputs.

Every error is `application/problem+json` (RFC 9457, the `Problem` schema) with a stable
`code`. A method a path does not answer is a `405` with `Allow`. Limits that depend on the
deployment (`MAX_DIMENSION`, `MAX_STEPS`, `MAX_VARIANTS`, `MAX_UPLOAD_SIZE`, `MAX_PIXELS`)
are checked at submit and answered with `400`, `413` or `422`; the schemas state the bounds
that hold everywhere.

With API_KEYS (or API_KEYS_FILE) set, `/jobs` and `/probe` need an API key
(`Authorization: Bearer <secret>`, else `401`), and a job belongs to the key that made it:
any other key is answered `404` for it. With RATE_LIMIT set, each key's submits are
limited (`429` beyond, with `Retry-After` and the `RateLimit` headers), as are its jobs
waiting with MAX_QUEUED_PER_KEY. An `Idempotency-Key` makes a submit safe to retry. A job
with a `callback_url` is announced there when it ends: the `jobEnded` webhook.

Below the application, the HTTP server (hypercorn) answers requests it cannot parse without
any body: `400` for a malformed request line or header, `431` for a request line or headers
over its limit. Send no body with `GET`, `DELETE` or `OPTIONS`: on a kept-alive connection,
one whose bytes arrive after the answer leaves that connection unanswered until the server's
read timeout (a fault of hypercorn 0.18 under quart-trio).
"""


def _version() -> str:
    try:
        return importlib.metadata.version("imgjobs")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that is not installed
        return "0+unknown"


def _schemas() -> dict[str, Schema]:
    """The wire types' schemas, with each tagged union named and referred to by its name."""
    generated, components = msgspec.json.schema_components(
        WIRE_TYPES, ref_template="#/components/schemas/{name}"
    )
    unions = {UNION_NAMES[t]: generated[WIRE_TYPES.index(t)] for t in UNION_NAMES}
    named = {key: _refer(value, unions) for key, value in components.items()}
    return dict(sorted((named | unions).items()))


def _refer(node: Any, unions: Mapping[str, Schema]) -> Any:
    """`node` with every copy of a named union replaced by a reference to it."""
    for name, union in unions.items():
        if node == union:
            return ref(name)
    if isinstance(node, dict):
        return {key: _refer(value, unions) for key, value in node.items()}
    if isinstance(node, list):
        return [_refer(value, unions) for value in node]
    return node


def _problem_response(status: int) -> Schema:
    _, description, headers = ERRORS[status]
    response: Schema = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": ref("Problem")}},
    }
    if headers:
        response["headers"] = {header: ref(header, "headers") for header in headers}
    return response


def _job_link(operation_id: str) -> Schema:
    target = next(route for route in ROUTES if route.operation_id == operation_id)
    return {
        "operationId": operation_id,
        "parameters": {p: LINK_VALUES[p] for p in target.parameters if p in LINK_VALUES},
        "description": "the job just submitted",
    }


def _operation(route: Route) -> Schema:
    responses: Schema = {}
    for status, reply in sorted(route.replies.items()):
        response: Schema = {"description": reply.description}
        if reply.content:
            response["content"] = {mt: {"schema": s} for mt, s in reply.content.items()}
        if reply.headers:
            response["headers"] = {header: ref(header, "headers") for header in reply.headers}
        if reply.links:
            response["links"] = {name: _job_link(name) for name in reply.links}
        responses[str(status)] = response
    for status in sorted((*route.errors, 500)):
        responses[str(status)] = ref(ERRORS[status][0], "responses")
    operation: Schema = {
        "operationId": route.operation_id,
        "tags": [route.tag],
        "summary": route.summary,
    }
    if route.description:
        operation["description"] = route.description
    if route.parameters:
        operation["parameters"] = [ref(name, "parameters") for name in route.parameters]
    if route.body is not None:
        examples = EXAMPLES.get(route.operation_id)
        content = {mt: {"schema": schema} for mt, schema in route.body.items()}
        if examples:
            content["application/json"]["examples"] = examples
        operation["requestBody"] = {"required": True, "content": content}
    if route.security:
        operation["security"] = [dict(requirement) for requirement in route.security]
    operation["responses"] = responses
    return operation


def openapi_document() -> Schema:
    """The whole description, as a JSON-ready dict."""
    paths: dict[str, Schema] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imgjobs",
            "version": _version(),
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "tags": list(TAGS),
        "paths": paths,
        "webhooks": WEBHOOKS,
        "components": {
            "schemas": _schemas(),
            "parameters": {name: {"name": name, **p} for name, p in PARAMETERS.items()},
            "headers": {
                name: {"description": text, "required": required, "schema": schema}
                for name, (schema, text, required) in HEADERS.items()
            },
            "responses": {ERRORS[status][0]: _problem_response(status) for status in ERRORS},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


@functools.cache
def openapi_json() -> bytes:
    """The document, encoded: built once per process (about 9 ms), as it depends only on
    the code."""
    return msgspec.json.encode(openapi_document())


def swagger_ui_folder() -> Path:
    """Where the sidecar package keeps Swagger UI. Found without importing the package,
    whose `__init__` imports Django."""
    spec = importlib.util.find_spec(SIDECAR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {SIDECAR_PACKAGE} package is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    return package / "static" / SIDECAR_PACKAGE / "swagger-ui-dist"


@blueprint.get("/openapi.json")
async def get_openapi() -> Response:
    return Response(openapi_json(), content_type="application/json")


@blueprint.get("/docs")
async def get_docs() -> Response:
    return Response(
        PAGE,
        content_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


@blueprint.get("/docs/assets/<asset>")
async def get_docs_asset(asset: str) -> Response:
    """One file of the page, by its name in a fixed list: no part of a URL reaches a path."""
    if asset == INIT_SCRIPT:
        return Response(INIT_JS, content_type="text/javascript; charset=utf-8")
    content_type = ASSET_TYPES.get(asset)
    if content_type is None:
        raise NotFound(f"no file {asset[:80]!r} under /docs/assets/")
    response = await send_file(
        swagger_ui_folder() / asset, mimetype=content_type, cache_timeout=ASSET_MAX_AGE_S
    )
    return await response.make_conditional(request)

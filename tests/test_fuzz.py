"""Property-based tests of the submit endpoint: whatever arrives, the answer is a clear
4xx (or 202 for a valid request), never a 5xx, never an accepted invalid job, and never
a server path, a traceback or a library version."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GOOD
from tests.servers import fuzz_client, make_settings

TINY_PNG = (GOOD / "pillow__pil123p.png").read_bytes()
TINY_B64 = base64.b64encode(TINY_PNG).decode()
FIELDS = ("image_data", "operation", "width", "height", "output_format")
LEAKS = ("Traceback", "/tmp/", "/work/", "site-packages", "hypercorn", "Quart", "Werkzeug")
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One real server process (as `make run` starts it) for every example."""
    settings = make_settings(
        tmp_path_factory.mktemp("fuzz"), max_upload_bytes=64 * 1024, queue_size=100_000
    )
    with fuzz_client(settings) as client:
        yield client


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    text = response.text
    for leak in LEAKS:
        assert leak not in text, text
    assert "server" not in response.headers
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["error"]


def is_valid(body: dict[str, Any]) -> bool:
    def dimension(value: Any) -> bool:
        return type(value) is int and 1 <= value <= 4096

    return (
        set(body) <= set(FIELDS)
        and {"image_data", "operation", "width", "height"} <= set(body)
        and body["image_data"] in (TINY_B64, "data:image/png;base64," + TINY_B64)
        and body["operation"] in ("resize", "thumbnail")
        and dimension(body["width"])
        and dimension(body["height"])
        and body.get("output_format") in (None, "jpeg", "jpg", "png")
    )


@FUZZ
@given(value=json_values)
def test_arbitrary_json_is_refused_clearly(client: httpx.Client, value: Any) -> None:
    response = client.post(
        "/jobs", content=json.dumps(value), headers={"Content-Type": "application/json"}
    )
    check_answer(response)
    assert response.status_code in (400, 415)


field_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            "resize",
            "thumbnail",
            "jpeg",
            "jpg",
            "png",
            "gif",
            TINY_B64,
            "data:image/png;base64," + TINY_B64,
            "data:text/plain;base64,QQ==",
            base64.b64encode(b"not an image").decode(),
            TINY_B64[:-3],
            "====",
            base64.urlsafe_b64encode(TINY_PNG).decode(),
            "\u00e9\u4e2d\U0001f600",
        ]
    ),
    st.integers(min_value=-5, max_value=5000),
)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {
            "image_data": st.just(TINY_B64) | field_values,
            "operation": st.sampled_from(["resize", "thumbnail"]) | field_values,
            "width": st.integers(min_value=1, max_value=64) | field_values,
            "height": st.integers(min_value=1, max_value=64) | field_values,
        },
        optional={"output_format": field_values, "extra": field_values},
    )
)
def test_a_job_is_accepted_exactly_when_the_request_is_valid(
    client: httpx.Client, body: dict[str, Any]
) -> None:
    response = client.post("/jobs", json=body)
    check_answer(response)
    if is_valid(body):
        assert response.status_code == 202, response.text
    else:
        assert response.status_code in (400, 413, 415, 422), response.text


@FUZZ
@given(
    content_type=st.sampled_from(
        [
            "text/plain",
            "application/xml",
            "application/json; charset=utf-8",
            "",
            "image/png",
            "application/octet-stream",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
        ]
    ),
    payload=st.binary(max_size=2048),
    query=st.dictionaries(
        st.sampled_from(["operation", "width", "height", "output_format", "x"]),
        st.text(max_size=8),
        max_size=5,
    ),
)
def test_any_body_and_content_type_gets_a_clear_answer(
    client: httpx.Client, content_type: str, payload: bytes, query: dict[str, str]
) -> None:
    response = client.post(
        "/jobs", params=query, content=payload, headers={"Content-Type": content_type}
    )
    check_answer(response)
    # Random bytes are never an image in a supported format.
    assert response.status_code != 202


@FUZZ
@given(
    job_id=st.text(min_size=1, max_size=80).filter(lambda s: "/" not in s and s not in (".", ".."))
)
def test_anything_that_is_not_a_job_id_is_a_404(client: httpx.Client, job_id: str) -> None:
    quoted = urllib.parse.quote(job_id, safe="")
    for path in (f"/jobs/{quoted}", f"/jobs/{quoted}/download"):
        response = client.get(path)
        check_answer(response)
        assert response.status_code in (404, 400), response.text

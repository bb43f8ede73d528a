"""Paths the routes do not match are problem answers, never an HTML page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.servers import make_settings, open_server
from tests.test_api import assert_problem


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, metrics_token="a-metrics-token")
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


@pytest.mark.parametrize(
    "path", ["/jobs//download", "/jobs/x//events", "/jobs//variants/default", "/admin//pool"]
)
async def test_doubled_slashes_are_a_404_problem_not_a_redirect(
    client: httpx.AsyncClient, path: str
) -> None:
    assert_problem(await client.get(path), 404)


async def test_a_refused_bearer_names_the_service_realm(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="imgjobs"'

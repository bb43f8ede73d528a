"""Every client reads a refusal: an upload answered before its body was read (413, 415)
gets its answer even when the client sends the whole body before reading, as Python's
urllib does (without the server reading the rest first, it saw a broken pipe)."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.servers import ServerProcess, make_settings

BODY = b"\xff\xd8\xff" + b"x" * (20 * 1024 * 1024)  # 20 MB, twenty times the limit


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    server = ServerProcess(make_settings(tmp_path, max_upload_bytes=1024 * 1024))
    async with trio.open_nursery() as nursery:
        yield await server.start(nursery)
        server.signal(signal.SIGTERM)
        await server.wait()


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, object]]:
    """POST with urllib: the whole body is sent before the answer is read."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("path", "content_type", "status", "code"),
    [
        ("/jobs?operation=resize&width=10&height=10", "image/jpeg", 413, "payload_too_large"),
        ("/jobs", "application/json", 413, "payload_too_large"),
        ("/probe", "image/jpeg", 413, "payload_too_large"),
        ("/jobs", "text/plain", 415, "unsupported_media_type"),
    ],
)
async def test_urllib_reads_the_refusal_of_a_body_it_sent_whole(
    url: str, path: str, content_type: str, status: int, code: str
) -> None:
    answer = await trio.to_thread.run_sync(post, url + path, BODY, content_type)
    assert answer[0] == status
    assert answer[1]["code"] == code
    # and the server goes on serving
    health = await trio.to_thread.run_sync(urllib.request.urlopen, url + "/health")
    assert health.status == 200

"""A minimal HTTP/1.1 client for the load, so that the benchmark measures the server.

httpx costs the benchmark's own process a few milliseconds of CPU per request, on the same
two cores as the server and its workers; like wrk, this client does as little as HTTP/1.1
allows: one keep-alive connection per job, `Content-Length` bodies only, loopback only.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode, urlsplit

import trio

__all__ = ["LeanConnection", "LeanResponse"]

MAX_HEAD_BYTES = 64 * 1024
RECEIVE_BYTES = 256 * 1024


class LeanResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    def json(self) -> Any:
        return json.loads(self.content)


class LeanConnection:
    """One connection to a loopback server; reconnects when the server closed it or a
    request failed half-way."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
            raise ValueError(f"benchmarks only talk to loopback, not {base_url}")
        self._host = parts.hostname
        self._port = parts.port
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> LeanResponse:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self._host, self._port)
            self._buffer.clear()
        target = f"{path}?{urlencode(params)}" if params else path
        head = f"{method} {target} HTTP/1.1\r\nHost: {self._host}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        try:
            return await self._exchange(head.encode() + b"\r\n", body)
        except BaseException:
            # Half a request or half an answer may be left on it: the next request reconnects.
            self._drop()
            raise

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.socket.close()  # synchronous: safe in a cancelled task's cleanup
            self._stream = None

    async def _exchange(self, head: bytes, body: bytes) -> LeanResponse:
        assert self._stream is not None
        try:
            await self._stream.send_all(head)
            if body:
                await self._stream.send_all(body)
        except trio.BrokenResourceError:
            pass  # the server answered early and closed: its answer is still readable
        return await self._read_response()

    async def _receive(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(RECEIVE_BYTES)
        if not chunk:
            raise ConnectionError("the server closed the connection without an answer")
        self._buffer += chunk

    async def _read_response(self) -> LeanResponse:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ConnectionError("response head too large")
            await self._receive()
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            await self._receive()
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        return LeanResponse(status, headers, body)

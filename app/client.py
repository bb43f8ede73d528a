"""A typed Python client for the imgjobs HTTP API: `Client` (sync) and `AsyncClient`.

It imports httpx and its own lenient answer types (`app.client_types`), nothing of the
server, and the async client runs under trio and asyncio alike (its file I/O goes through
anyio, which httpx brings). Every answer is decoded into those types, which ignore members
a newer server adds; every failure is one of::

    ClientError              base of everything this module raises about a call
    ├── HTTPError            the server answered 4xx/5xx: `status`, `code` and `message`
    │                        from its problem+json body (`retry_after_s` from a 429 or 503)
    ├── Unreachable          no answer: connection refused, DNS, time-outs, a dropped line
    ├── UnexpectedResponse   an answer the API does not send (a proxy's error page...)
    ├── JobFailed            `wait(..., check=True)` found the job failed: `job.error`
    └── WaitTimedOut         `wait(..., timeout_s=...)` ran out first (also a TimeoutError)

Usage::

    with Client() as client:           # IMGJOBS_URL, IMGJOBS_API_KEY, or the arguments
        job = client.submit("photo.jpg", steps=[{"op": "resize", "width": 800}])
        client.wait(job.job_id, timeout_s=60, check=True)
        client.download_to(job.job_id, "photo-800.jpg")
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Final, Literal, Unpack, overload
from urllib.parse import quote

import anyio
import httpx

from app.client_types import (
    MAX_QUERY_SPEC_BYTES,
    ClientError,
    Description,
    DryRun,
    Health,
    HTTPError,
    JobError,
    JobFailed,
    JobList,
    JobOptions,
    JobView,
    PlannedOutput,
    Progress,
    Submitted,
    UnexpectedResponse,
    Unreachable,
    Upload,
    VariantView,
    WaitTimedOut,
    WebhookView,
    decode,
    decode_submitted,
    job_request,
    raise_for_status,
)

__all__ = [
    "MAX_QUERY_SPEC_BYTES",
    "AsyncClient",
    "Client",
    "ClientError",
    "Description",
    "DryRun",
    "HTTPError",
    "Health",
    "ImageSource",
    "JobError",
    "JobFailed",
    "JobList",
    "JobOptions",
    "JobView",
    "PlannedOutput",
    "Progress",
    "Submitted",
    "UnexpectedResponse",
    "Unreachable",
    "VariantView",
    "WaitTimedOut",
    "WebhookView",
]

DEFAULT_URL: Final = "http://localhost:8080"
URL_VARIABLE: Final = "IMGJOBS_URL"
KEY_VARIABLE: Final = "IMGJOBS_API_KEY"
#: The longest long-poll the server holds (`GET /jobs/{id}?wait=N`).
MAX_WAIT_S: Final = 60.0
TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)
TERMINAL: Final = frozenset({"completed", "failed"})
#: Cleanup of a cancelled download: how long it may take, shielded from the cancellation.
CLEANUP_S: Final = 5.0
#: `Idempotency-Key`: 1 to 255 printable ASCII characters (what an HTTP header carries).
MAX_IDEMPOTENCY_KEY: Final = 255

#: An image: its bytes, or the path of a file (streamed, never read whole).
ImageSource = bytes | str | os.PathLike[str]


def _source(image: ImageSource) -> bytes | Path:
    return image if isinstance(image, bytes) else Path(image)


def _size(source: bytes | Path) -> int:
    return len(source) if isinstance(source, bytes) else source.stat().st_size


async def _asize(source: bytes | Path) -> int:
    return len(source) if isinstance(source, bytes) else (await anyio.Path(source).stat()).st_size


def _submit_headers(upload: Upload, idempotency_key: str | None) -> dict[str, str]:
    headers = upload.headers()
    if idempotency_key is None:
        return headers
    if not (
        1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
        and idempotency_key.isascii()
        and idempotency_key.isprintable()
    ):
        raise ValueError(
            f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )
    return headers | {"Idempotency-Key": idempotency_key}


def _job_path(job_id: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}"


def _download_path(job_id: str, variant: str | None) -> str:
    if variant is None:
        return f"{_job_path(job_id)}/download"
    return f"{_job_path(job_id)}/variants/{quote(variant, safe='')}"


def _poll(job_id: str, wait_s: float | None) -> tuple[str, dict[str, str], httpx.Timeout]:
    if not wait_s:
        return _job_path(job_id), {}, TIMEOUT
    # The server holds the request up to wait_s: the read time-out must outlast it.
    return (
        _job_path(job_id),
        {"wait": f"{wait_s:.3f}"},
        httpx.Timeout(60.0, connect=10.0, read=wait_s + 30),
    )


def _page(status: str | None, limit: int | None, cursor: str | None) -> dict[str, str]:
    given = {"status": status, "limit": None if limit is None else str(limit), "cursor": cursor}
    return {name: value for name, value in given.items() if value is not None}


def _ended(job: JobView, check: bool) -> JobView:
    if check and job.status == "failed":
        raise JobFailed(job)
    return job


def _settings(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    url = (url or os.environ.get(URL_VARIABLE) or DEFAULT_URL).rstrip("/")
    key = os.environ.get(KEY_VARIABLE) if api_key is None else api_key
    return url, {"Authorization": f"Bearer {key}"} if key else {}


def _remaining(deadline: float | None) -> float:
    if deadline is None:
        return MAX_WAIT_S
    return max(0.0, min(MAX_WAIT_S, deadline - time.monotonic()))


class Client:
    """The imgjobs API over a blocking `httpx.Client`; a context manager.

    `url` defaults to `IMGJOBS_URL` (else http://localhost:8080), `api_key` to
    `IMGJOBS_API_KEY` (sent as `Authorization: Bearer`); `transport` is httpx's, for tests.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, headers = _settings(url, api_key)
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=TIMEOUT, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from exc

    def _upload(
        self,
        path: str,
        params: dict[str, str],
        upload: Upload,
        progress: Progress | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        return self._send(
            "POST", path, params=params, headers=headers, content=upload.chunks(progress)
        )

    @overload
    def submit(
        self,
        image: ImageSource,
        *,
        dry_run: Literal[False] = False,
        progress: Progress | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[JobOptions],
    ) -> Submitted: ...
    @overload
    def submit(
        self,
        image: ImageSource,
        *,
        dry_run: Literal[True],
        progress: Progress | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[JobOptions],
    ) -> DryRun: ...
    def submit(
        self,
        image: ImageSource,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[JobOptions],
    ) -> Submitted | DryRun:
        """Upload an image with what to make of it and whom to tell (`JobOptions`): the
        job's id and status (`Submitted`), or with `dry_run` the planned outputs (nothing
        is created). A path is streamed from disk.

        `idempotency_key` (the `Idempotency-Key` header) makes a retry safe: the same key
        with the same request within 24 hours answers the first request's job again
        (`replayed` true) instead of making another; with another request, `HTTPError`
        422 `idempotency_key_reused`."""
        source = _source(image)
        params, upload = job_request(source, _size(source), options, dry_run=dry_run)
        headers = _submit_headers(upload, idempotency_key)
        return decode_submitted(self._upload("/jobs", params, upload, progress, headers), dry_run)

    def probe(self, image: ImageSource) -> Description:
        """What the server makes of an upload (format, displayed size...), creating nothing."""
        source = _source(image)
        upload = Upload(source, _size(source))
        return decode(self._upload("/probe", {}, upload, None, upload.headers()), Description)

    def job(self, job_id: str, *, wait_s: float | None = None) -> JobView:
        """The job; with `wait_s` (up to 60), the server first waits that long for its end."""
        path, params, timeout = _poll(job_id, wait_s)
        return decode(self._send("GET", path, params=params, timeout=timeout), JobView)

    def list_jobs(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobList:
        """A page of jobs, newest first: `status` filters, `limit` (1 to 100, else the
        server's 20) sizes the page, `cursor` (the last page's `next_cursor`) continues."""
        params = _page(status, limit, cursor)
        return decode(self._send("GET", "/jobs", params=params), JobList)

    def wait(self, job_id: str, *, timeout_s: float | None = None, check: bool = False) -> JobView:
        """Long-poll until the job is completed or failed (`WaitTimedOut` after `timeout_s`;
        None waits for ever). With `check`, a failed job raises `JobFailed`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id, wait_s=_remaining(deadline))
            if job.status in TERMINAL:
                return _ended(job, check)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(job, timeout_s or 0.0)

    def download(self, job_id: str, variant: str | None = None) -> bytes:
        """A completed job's output: `variant`, or its default (or only) one."""
        response = self._send("GET", _download_path(job_id, variant))
        raise_for_status(response)
        return response.content

    def download_to(
        self, job_id: str, path: str | os.PathLike[str], variant: str | None = None
    ) -> int:
        """Stream an output into the file `path` (whole or not at all); its size in bytes."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.part")
        written = 0
        try:
            with self._http.stream("GET", _download_path(job_id, variant)) as response:
                if response.is_error:
                    response.read()
                    raise_for_status(response)
                with partial.open("wb") as file:
                    for chunk in response.iter_bytes():
                        written += file.write(chunk)
            partial.replace(target)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from exc
        finally:
            partial.unlink(missing_ok=True)
        return written

    def delete(self, job_id: str) -> None:
        """Remove a job and its files (a queued or running job is cancelled)."""
        raise_for_status(self._send("DELETE", _job_path(job_id)))

    def health(self) -> Health:
        return decode(self._send("GET", "/health"), Health)


class AsyncClient:
    """The imgjobs API over `httpx.AsyncClient`, under trio or asyncio; an async context
    manager. Arguments as `Client`'s. Cancel a call with your library's own time-outs."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, headers = _settings(url, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=TIMEOUT, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from exc

    async def _upload(
        self,
        path: str,
        params: dict[str, str],
        upload: Upload,
        progress: Progress | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        return await self._send(
            "POST", path, params=params, headers=headers, content=upload.achunks(progress)
        )

    @overload
    async def submit(
        self,
        image: ImageSource,
        *,
        dry_run: Literal[False] = False,
        progress: Progress | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[JobOptions],
    ) -> Submitted: ...
    @overload
    async def submit(
        self,
        image: ImageSource,
        *,
        dry_run: Literal[True],
        progress: Progress | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[JobOptions],
    ) -> DryRun: ...
    async def submit(
        self,
        image: ImageSource,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[JobOptions],
    ) -> Submitted | DryRun:
        """As `Client.submit`."""
        source = _source(image)
        params, upload = job_request(source, await _asize(source), options, dry_run=dry_run)
        headers = _submit_headers(upload, idempotency_key)
        response = await self._upload("/jobs", params, upload, progress, headers)
        return decode_submitted(response, dry_run)

    async def probe(self, image: ImageSource) -> Description:
        """As `Client.probe`."""
        source = _source(image)
        upload = Upload(source, await _asize(source))
        response = await self._upload("/probe", {}, upload, None, upload.headers())
        return decode(response, Description)

    async def job(self, job_id: str, *, wait_s: float | None = None) -> JobView:
        """As `Client.job`."""
        path, params, timeout = _poll(job_id, wait_s)
        return decode(await self._send("GET", path, params=params, timeout=timeout), JobView)

    async def list_jobs(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobList:
        """As `Client.list_jobs`."""
        params = _page(status, limit, cursor)
        return decode(await self._send("GET", "/jobs", params=params), JobList)

    async def wait(
        self, job_id: str, *, timeout_s: float | None = None, check: bool = False
    ) -> JobView:
        """As `Client.wait`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.job(job_id, wait_s=_remaining(deadline))
            if job.status in TERMINAL:
                return _ended(job, check)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(job, timeout_s or 0.0)

    async def download(self, job_id: str, variant: str | None = None) -> bytes:
        """As `Client.download`."""
        response = await self._send("GET", _download_path(job_id, variant))
        raise_for_status(response)
        return response.content

    async def download_to(
        self, job_id: str, path: str | os.PathLike[str], variant: str | None = None
    ) -> int:
        """As `Client.download_to`."""
        target = anyio.Path(path)
        partial = target.with_name(f".{target.name}.part")
        written = 0
        try:
            async with self._http.stream("GET", _download_path(job_id, variant)) as response:
                if response.is_error:
                    await response.aread()
                    raise_for_status(response)
                async with await anyio.open_file(partial, "wb") as file:
                    async for chunk in response.aiter_bytes():
                        written += await file.write(chunk)
            await partial.replace(target)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from exc
        finally:
            with anyio.move_on_after(CLEANUP_S, shield=True):
                await partial.unlink(missing_ok=True)
        return written

    async def delete(self, job_id: str) -> None:
        """As `Client.delete`."""
        raise_for_status(await self._send("DELETE", _job_path(job_id)))

    async def health(self) -> Health:
        return decode(await self._send("GET", "/health"), Health)

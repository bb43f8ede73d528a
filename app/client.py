"""A typed Python client for the imgjobs HTTP API: `Client` (sync) and `AsyncClient`.

It imports the wire types (`app.models`) and httpx, nothing of the server, and the async
client runs under trio and asyncio alike (its file I/O goes through anyio, which httpx
brings). Every answer is decoded into the wire types; every failure is one of::

    ClientError              base of everything this module raises about a call
    ├── HTTPError            the server answered 4xx/5xx: `status`, `code` and `message`
    │                        from its problem+json body (`retry_after_s` from a 503)
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
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TypedDict, TypeVar, Unpack, overload
from urllib.parse import quote

import anyio
import httpx
import msgspec

from app.models import (
    Description,
    Document,
    DryRun,
    Health,
    JobSubmitted,
    JobView,
    Output,
    Step,
    Variant,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "HTTPError",
    "ImageSource",
    "JobFailed",
    "JobOptions",
    "Progress",
    "UnexpectedResponse",
    "Unreachable",
    "WaitTimedOut",
]

DEFAULT_URL: Final = "http://localhost:8080"
URL_VARIABLE: Final = "IMGJOBS_URL"
KEY_VARIABLE: Final = "IMGJOBS_API_KEY"
#: The longest URL-encoded `spec` sent in the query string; a longer document goes as the
#: `spec` field of a multipart form. Request lines over 8 KB are refused by common proxies
#: (nginx's default buffers), over 64 KB by httpx itself.
MAX_QUERY_SPEC_BYTES: Final = 4096
#: The longest long-poll the server holds (`GET /jobs/{id}?wait=N`).
MAX_WAIT_S: Final = 60.0
CHUNK_BYTES: Final = 256 * 1024
TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)
TERMINAL: Final = frozenset({"completed", "failed"})
_PARTS: Final = frozenset({"steps", "output", "variants"})
#: Cleanup of a cancelled download: how long it may take, shielded from the cancellation.
CLEANUP_S: Final = 5.0

#: An image: its bytes, or the path of a file (streamed, never read whole).
ImageSource = bytes | str | os.PathLike[str]
#: Called as the upload goes: `(image bytes sent, image bytes in all)`.
Progress = Callable[[int, int], None]
T = TypeVar("T")


class ClientError(Exception):
    """Base of every error the client raises about a call."""


class HTTPError(ClientError):
    """The server answered with an error status; `code` is its stable machine code."""

    def __init__(
        self, status: int, code: str | None, message: str, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {code or 'error'}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class Unreachable(ClientError):
    """No answer from the server (connection refused, DNS, time-out, dropped connection)."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach {url}: {str(cause) or type(cause).__name__}")
        self.url = url


class UnexpectedResponse(ClientError):
    """An answer that is not what the imgjobs API sends."""


class JobFailed(ClientError):
    """The job ended `failed`; `job.error` says why."""

    def __init__(self, job: JobView) -> None:
        error = job.error
        reason = f"{error.code}: {error.message}" if error else "no reason given"
        super().__init__(f"job {job.id} failed ({reason})")
        self.job = job


class WaitTimedOut(ClientError, TimeoutError):
    """The job had not ended when `wait` gave up; `job` is its last view."""

    def __init__(self, job: JobView, timeout_s: float) -> None:
        super().__init__(f"job {job.id} is still {job.status} after {timeout_s:g} s")
        self.job = job


class JobOptions(TypedDict, total=False):
    """What a job makes of its upload: a job document (whole, or its parts), or one of the
    seed's operations. Give one form; with none, the image is re-encoded (seed's format rule).
    Mappings are sent as they are, so the server names any bad field by its path."""

    document: Document | Mapping[str, Any]
    steps: Sequence[Step | Mapping[str, Any]]
    output: Output | Mapping[str, Any]
    variants: Mapping[str, Variant | Mapping[str, Any]]
    #: The seed's `resize`: exactly (width, height), the aspect ratio may change.
    resize: tuple[int, int]
    #: The seed's `thumbnail`: fit inside (width, height), never enlarged.
    thumbnail: tuple[int, int]
    #: With `resize` or `thumbnail` only (a document says `output={"format": ...}`).
    output_format: Literal["jpeg", "jpg", "png"]


class _Upload(NamedTuple):
    """A request body: the image, between the head and tail of a form when there is one."""

    image: bytes | Path
    size: int
    head: bytes = b""
    tail: bytes = b""
    content_type: str = "application/octet-stream"

    def headers(self) -> dict[str, str]:
        length = len(self.head) + self.size + len(self.tail)
        return {"Content-Type": self.content_type, "Content-Length": str(length)}

    def chunks(self, progress: Progress | None) -> Iterator[bytes]:
        yield self.head
        sent = 0
        for chunk in _read(self.image):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, self.size)
        yield self.tail

    async def achunks(self, progress: Progress | None) -> AsyncIterator[bytes]:
        yield self.head
        sent = 0
        async for chunk in _aread(self.image):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, self.size)
        yield self.tail


def _read(image: bytes | Path) -> Iterator[bytes]:
    if isinstance(image, bytes):
        yield from (image[at : at + CHUNK_BYTES] for at in range(0, len(image), CHUNK_BYTES))
        return
    with image.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk


async def _aread(image: bytes | Path) -> AsyncIterator[bytes]:
    if isinstance(image, bytes):
        for chunk in _read(image):
            yield chunk
        return
    async with await anyio.open_file(image, "rb") as file:
        while chunk := await file.read(CHUNK_BYTES):
            yield chunk


def _source(image: ImageSource) -> bytes | Path:
    return image if isinstance(image, bytes) else Path(image)


def _job_request(
    source: bytes | Path, size: int, options: JobOptions, *, dry_run: bool
) -> tuple[dict[str, str], _Upload]:
    """The query parameters and body of `POST /jobs`: the document in `?spec=` or, when
    too long for a request head, in a multipart form beside the image."""
    params = {"dry_run": "true"} if dry_run else {}
    seed = [name for name in ("resize", "thumbnail") if name in options]
    parts = [name for name in ("document", "steps", "output", "variants") if name in options]
    if len(seed) > 1 or (seed and parts) or ("document" in parts and len(parts) > 1):
        raise ValueError(
            f"give one of: a document, its parts, resize or thumbnail; got {seed + parts}"
        )
    if "output_format" in options and not seed:
        raise ValueError('output_format goes with resize or thumbnail; else output={"format": ...}')
    if seed:
        width, height = options["resize"] if seed == ["resize"] else options["thumbnail"]
        params |= {"operation": seed[0], "width": str(width), "height": str(height)}
        if "output_format" in options:
            params["output_format"] = options["output_format"]
        return params, _Upload(source, size)
    document = (
        options["document"]
        if "document" in options
        else {name: value for name, value in options.items() if name in _PARTS}
    )
    spec = msgspec.json.encode(document)
    if len(quote(spec, safe="")) <= MAX_QUERY_SPEC_BYTES:
        return params | {"spec": spec.decode()}, _Upload(source, size)
    boundary = os.urandom(16).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n'.encode()
        + spec
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="image";'
        f' filename="image"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
    )
    tail = f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    return params, _Upload(source, size, head, tail, content_type)


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


class _Problem(msgspec.Struct, frozen=True):
    """The parts of a problem+json body the client reads; lenient on purpose."""

    code: str | None = None
    error: str | None = None
    detail: str | None = None
    title: str | None = None


def _raise_for_status(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        problem = msgspec.json.decode(response.content, type=_Problem)
    except (msgspec.DecodeError, msgspec.ValidationError):
        problem = _Problem(error=response.text[:200].strip() or response.reason_phrase)
    message = problem.error or problem.detail or problem.title or response.reason_phrase
    retry_after = response.headers.get("Retry-After", "")
    raise HTTPError(
        response.status_code,
        problem.code,
        " ".join(message.split()),
        retry_after_s=float(retry_after) if retry_after.isdigit() else None,
    )


def _decode(response: httpx.Response, kind: type[T]) -> T:
    _raise_for_status(response)
    try:
        return msgspec.json.decode(response.content, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UnexpectedResponse(
            f"{response.request.method} {response.request.url.path}: not a {kind.__name__}: {exc}"
        ) from None


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
        self, path: str, params: dict[str, str], upload: _Upload, progress: Progress | None
    ) -> httpx.Response:
        return self._send(
            "POST", path, params=params, headers=upload.headers(), content=upload.chunks(progress)
        )

    @overload
    def submit(
        self,
        image: ImageSource,
        *,
        dry_run: Literal[False] = False,
        progress: Progress | None = None,
        **options: Unpack[JobOptions],
    ) -> JobSubmitted: ...
    @overload
    def submit(
        self,
        image: ImageSource,
        *,
        dry_run: Literal[True],
        progress: Progress | None = None,
        **options: Unpack[JobOptions],
    ) -> DryRun: ...
    def submit(
        self,
        image: ImageSource,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        **options: Unpack[JobOptions],
    ) -> JobSubmitted | DryRun:
        """Upload an image with what to make of it (`JobOptions`); the job's id, or with
        `dry_run` the planned outputs (nothing is created). A path is streamed from disk."""
        source = _source(image)
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        params, upload = _job_request(source, size, options, dry_run=dry_run)
        response = self._upload("/jobs", params, upload, progress)
        return _decode(response, DryRun) if dry_run else _decode(response, JobSubmitted)

    def probe(self, image: ImageSource) -> Description:
        """What the server makes of an upload (format, displayed size...), creating nothing."""
        source = _source(image)
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        return _decode(self._upload("/probe", {}, _Upload(source, size), None), Description)

    def job(self, job_id: str, *, wait_s: float | None = None) -> JobView:
        """The job; with `wait_s` (up to 60), the server first waits that long for its end."""
        path, params, timeout = _poll(job_id, wait_s)
        return _decode(self._send("GET", path, params=params, timeout=timeout), JobView)

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
        _raise_for_status(response)
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
                    _raise_for_status(response)
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
        _raise_for_status(self._send("DELETE", _job_path(job_id)))

    def health(self) -> Health:
        return _decode(self._send("GET", "/health"), Health)


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
        self, path: str, params: dict[str, str], upload: _Upload, progress: Progress | None
    ) -> httpx.Response:
        return await self._send(
            "POST", path, params=params, headers=upload.headers(), content=upload.achunks(progress)
        )

    @overload
    async def submit(
        self,
        image: ImageSource,
        *,
        dry_run: Literal[False] = False,
        progress: Progress | None = None,
        **options: Unpack[JobOptions],
    ) -> JobSubmitted: ...
    @overload
    async def submit(
        self,
        image: ImageSource,
        *,
        dry_run: Literal[True],
        progress: Progress | None = None,
        **options: Unpack[JobOptions],
    ) -> DryRun: ...
    async def submit(
        self,
        image: ImageSource,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        **options: Unpack[JobOptions],
    ) -> JobSubmitted | DryRun:
        """As `Client.submit`."""
        source = _source(image)
        size = (
            len(source) if isinstance(source, bytes) else (await anyio.Path(source).stat()).st_size
        )
        params, upload = _job_request(source, size, options, dry_run=dry_run)
        response = await self._upload("/jobs", params, upload, progress)
        return _decode(response, DryRun) if dry_run else _decode(response, JobSubmitted)

    async def probe(self, image: ImageSource) -> Description:
        """As `Client.probe`."""
        source = _source(image)
        size = (
            len(source) if isinstance(source, bytes) else (await anyio.Path(source).stat()).st_size
        )
        return _decode(await self._upload("/probe", {}, _Upload(source, size), None), Description)

    async def job(self, job_id: str, *, wait_s: float | None = None) -> JobView:
        """As `Client.job`."""
        path, params, timeout = _poll(job_id, wait_s)
        return _decode(await self._send("GET", path, params=params, timeout=timeout), JobView)

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
        _raise_for_status(response)
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
                    _raise_for_status(response)
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
        _raise_for_status(await self._send("DELETE", _job_path(job_id)))

    async def health(self) -> Health:
        return _decode(await self._send("GET", "/health"), Health)

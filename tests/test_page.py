"""The web page at `/`: its files over HTTP, and the page itself driven in a real headless
Chromium (Debian's /usr/bin/chromium, through Playwright's sync API) against a real
`python -m app` in a child process."""

from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Route,
    expect,
    sync_playwright,
)

from tests.conftest import BAD, GOOD, ROOT, corpus_files
from tests.servers import environment, make_settings

CHROMIUM = Path("/usr/bin/chromium")
# What the machine notes say Chromium needs here (no network but the loopback).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_MS = 30_000  # a probe, a dry run, a page load
JOB_MS = 60_000  # a job, from submit to the result on screen
START_S = 60.0
STOP_S = 40.0
PHOTO = GOOD / "mate__Storm.jpg"  # 1920x1280 JPEG
ALICE_KEY = "alice-secret-0123456789"
WRONG_KEY = "mallory-guess-0123456789"
NOT_AN_IMAGE = BAD / "gnome__oceans.svg"
# What Chromium logs for every fetch answered 4xx/5xx: expected where a test asks for one.
HTTP_ERROR_LOG = re.compile(r"^Failed to load resource: the server responded with a status of \d+")


class AppProcess:
    """`python -m app` on a free port, its JSON log lines read by a thread (so its stderr
    never fills up); the URL comes from its `server.listening` line."""

    def __init__(self, tmp: Path, **settings_overrides: Any) -> None:
        settings = make_settings(
            tmp, **({"worker_pool_size": 2, "shutdown_grace_s": 5.0} | settings_overrides)
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=ROOT,
            env=environment(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr,))
        self._reader.start()
        self.url = ""

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "stderr", "text": raw.decode(errors="replace").rstrip()}
            if not isinstance(event, dict):
                event = {"event": "stderr", "text": repr(event)}
            self.events.append(event)
            self._lines.put(event)
        self._lines.put(None)

    def wait_listening(self) -> str:
        while True:
            try:
                event = self._lines.get(timeout=START_S)
            except queue.Empty:
                break
            if event is None:
                break
            if event.get("event") == "server.listening":
                self.url = str(event["urls"][0])
                return self.url
        raise AssertionError(f"the server did not start; its last lines: {self.events[-8:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        assert self.process.stderr is not None
        self.process.stderr.close()

    def logged(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]


def serve(tmp: Path, **settings_overrides: Any) -> Iterator[AppProcess]:
    corpus_files(GOOD)  # the corpus is there, or a usage error saying how to get it
    app = AppProcess(tmp, **settings_overrides)
    try:
        app.wait_listening()
        yield app
    finally:
        app.stop()
    assert not app.logged("request.error"), app.logged("request.error")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    yield from serve(tmp_path_factory.mktemp("page-server"))


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    """A server with API keys: alice's is the only one."""
    yield from serve(tmp_path_factory.mktemp("keyed-server"), api_keys=f"alice:{ALICE_KEY}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"Debian's chromium is not installed at {CHROMIUM}: `make test` installs it")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Console:
    """What the page logged: console messages and uncaught errors."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.messages.append(f"{message.type}: {message.text}")

    def problems(self, *, http_errors: bool = False) -> list[str]:
        """Page errors and console errors/warnings; `http_errors`: leave out Chromium's line
        for each 4xx/5xx answer (the test asked for one)."""
        messages = [
            m
            for m in self.messages
            if not (http_errors and HTTP_ERROR_LOG.match(m.split(": ", 1)[1]))
        ]
        return self.errors + messages


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP_MS)
    try:
        yield context
    finally:
        context.close()


def size(width: int, height: int) -> str:
    """A size as the page writes it, with a multiplication sign."""
    return f"{width} \N{MULTIPLICATION SIGN} {height}"


def open_page(context: BrowserContext, server: AppProcess) -> tuple[Page, Console]:
    page = context.new_page()
    console = Console(page)
    page.goto(server.url + "/")
    expect(page).to_have_title(re.compile("imgjobs"))
    expect(page.locator("#health-text")).to_have_text(re.compile("^Ready"), timeout=STEP_MS)
    return page, console


def choose_photo(page: Page) -> None:
    page.locator("#file").set_input_files(PHOTO)
    facts = page.locator("#facts")
    expect(facts).to_contain_text(size(1920, 1280) + " px", timeout=STEP_MS)
    expect(facts).to_contain_text("JPEG")


def planned(page: Page) -> Locator:
    return page.locator("#plan-size")


def test_page_makes_an_image_and_downloads_it(
    server: AppProcess, context: BrowserContext, tmp_path: Path
) -> None:
    page, console = open_page(context, server)
    expect(page.locator("#result-title")).to_be_visible()
    page.screenshot(path=tmp_path / "before.png")
    choose_photo(page)
    # The default preset (Thumbnail 300: inside 300x300), planned by a dry run.
    expect(planned(page)).to_have_text(size(300, 200), timeout=STEP_MS)

    page.locator("label.preset", has_text="Square 400").click()
    expect(page.get_by_role("radio", name=re.compile("Square 400"))).to_be_checked()
    expect(planned(page)).to_have_text(size(400, 400), timeout=STEP_MS)

    # Custom: editing a field switches to Custom, and the dry run follows the edits.
    page.get_by_label("Width", exact=True).fill("640")
    page.get_by_label("Height", exact=True).fill("360")
    page.get_by_label("Fit", exact=True).select_option("cover")
    page.get_by_label("Position", exact=True).select_option("entropy")
    page.get_by_label("Format", exact=True).select_option("webp")
    page.get_by_label("Quality", exact=True).fill("70")
    expect(page.get_by_role("radio", name=re.compile("Custom"))).to_be_checked()
    expect(planned(page)).to_have_text(size(640, 360), timeout=STEP_MS)
    expect(page.locator("#plan")).to_contain_text("WEBP")

    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.get_by_role("button", name="Make image").click()
    expect(page.locator("#outcome")).to_be_visible(timeout=JOB_MS)
    expect(page.locator("#job-status")).to_contain_text("Done")
    # Followed by its server-sent events, not by polling.
    assert any(re.search(r"/jobs/[0-9a-f-]+/events$", url) for url in requested), requested
    assert not any("wait=" in url for url in requested), requested
    expect(page.locator("#result-meta")).to_contain_text(size(640, 360) + " · WEBP")
    expect(page.locator("#original-meta")).to_contain_text(size(1920, 1280) + " · JPEG")
    result = page.locator("#result-img")
    expect(result).to_be_visible()
    page.wait_for_function(
        "() => document.getElementById('result-img').naturalWidth === 640", timeout=STEP_MS
    )

    with page.expect_download(timeout=STEP_MS) as started:
        page.get_by_role("link", name=re.compile("^Download WEBP")).click()
    download = started.value
    assert download.failure() is None
    assert download.suggested_filename.endswith(".webp"), download.suggested_filename
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(saved) as image:
        assert (image.format, image.size) == ("WEBP", (640, 360))

    screenshot = tmp_path / "result.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 10_000
    # A server without keys never asks for one.
    expect(page.locator("#key-panel")).to_be_hidden()
    assert "Authorization" not in (page.locator("#curl").text_content() or "")
    assert console.problems() == []


def test_page_shows_the_api_error_for_a_file_it_cannot_use(
    server: AppProcess, context: BrowserContext
) -> None:
    # What the API says about the file, to find word for word in the page.
    answer = httpx.post(
        server.url + "/probe",
        content=NOT_AN_IMAGE.read_bytes(),
        headers={"Content-Type": "image/svg+xml"},
    )
    assert answer.status_code == 415
    message = answer.json()["error"]

    page, console = open_page(context, server)
    page.locator("#file").set_input_files(NOT_AN_IMAGE)
    alert = page.locator("#source-alert")
    expect(alert).to_be_visible(timeout=STEP_MS)
    expect(alert).to_contain_text(message)
    expect(alert).to_contain_text("unsupported_format")
    expect(page.get_by_role("button", name="Make image")).to_be_disabled()

    # Another file then works, and a size beyond MAX_DIMENSION shows the API's reason.
    page.get_by_role("button", name="Choose another image").click()
    expect(alert).to_be_hidden()
    choose_photo(page)
    page.get_by_label("Width", exact=True).fill("5000")
    plan = page.locator("#plan")
    expect(plan).to_have_attribute("data-state", "error", timeout=STEP_MS)
    expect(plan).to_contain_text("steps[0].width")
    expect(plan).to_contain_text("4096")
    expect(page.get_by_role("button", name="Make image")).to_be_disabled()
    assert console.problems(http_errors=True) == []


def test_page_offers_a_retry_when_the_queue_is_full(
    server: AppProcess, context: BrowserContext
) -> None:
    page, console = open_page(context, server)
    refused: list[str] = []

    def full_once(route: Route) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(route.request.url).query)
        if route.request.method != "POST" or "dry_run" in query or refused:
            route.continue_()
            return
        refused.append(route.request.url)
        problem = {
            "title": "Service Unavailable",
            "status": 503,
            "detail": "the job queue is full (1000 jobs waiting); retry later",
            "code": "queue_full",
            "error": "the job queue is full (1000 jobs waiting); retry later",
        }
        route.fulfill(
            status=503,
            headers={"Retry-After": "2", "Connection": "close"},
            content_type="application/problem+json",
            body=json.dumps(problem),
        )

    page.route(re.compile(r"/jobs\?"), full_once)
    choose_photo(page)
    expect(planned(page)).to_have_text(size(300, 200), timeout=STEP_MS)
    page.get_by_role("button", name="Make image").click()

    alert = page.locator("#job-alert")
    expect(alert).to_be_visible(timeout=STEP_MS)
    expect(alert).to_contain_text("The queue is full")
    expect(alert).to_contain_text("the job queue is full (1000 jobs waiting); retry later")
    expect(alert).to_contain_text("No job was created")
    expect(alert).to_contain_text("2 s")
    assert len(refused) == 1

    alert.get_by_role("button", name="Try again").click()
    expect(page.locator("#outcome")).to_be_visible(timeout=JOB_MS)
    expect(page.locator("#result-meta")).to_contain_text(size(300, 200) + " · JPEG")
    expect(alert).to_be_hidden()
    assert console.problems(http_errors=True) == []


def test_page_asks_for_an_api_key_and_sends_it(
    keyed_server: AppProcess, context: BrowserContext, tmp_path: Path
) -> None:
    server = keyed_server
    # What the API says without a key and with a wrong one, to find in the page.
    with httpx.Client(base_url=server.url) as client:
        missing = client.post(
            "/probe", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"}
        )
        assert missing.status_code == 401
        wrong = client.get("/jobs", headers={"Authorization": f"Bearer {WRONG_KEY}"})
        assert wrong.status_code == 401
    needs_a_key, not_valid = missing.json()["error"], wrong.json()["error"]

    page, console = open_page(context, server)
    key_field = page.locator("#key-form").get_by_label("API key", exact=True)
    key_message = page.locator("#key-message")
    make_image = page.get_by_role("button", name="Make image")
    expect(key_field).to_be_hidden()  # /health and the page need no key

    # The probe's 401 brings up the field, with the server's reason.
    page.locator("#file").set_input_files(PHOTO)
    expect(key_field).to_be_visible(timeout=STEP_MS)
    expect(key_field).to_have_attribute("type", "password")
    expect(key_field).to_have_attribute("autocomplete", "off")
    expect(key_field).to_be_focused()
    expect(key_message).to_contain_text("This server needs an API key")
    expect(key_message).to_contain_text(needs_a_key, ignore_case=True)
    expect(page.locator("#source-alert")).to_be_hidden()
    expect(make_image).to_be_disabled()
    expect(page.locator("#curl")).to_contain_text('-H "Authorization: Bearer $IMGJOBS_API_KEY"')

    # A wrong key: the 401's message beside the field, the key not kept, nothing else moves.
    key_field.fill(WRONG_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(key_message).to_contain_text(not_valid, ignore_case=True, timeout=STEP_MS)
    expect(key_message).to_have_attribute("data-state", "error")
    expect(key_field).to_have_attribute("aria-invalid", "true")
    assert page.evaluate("() => sessionStorage.length") == 0
    expect(page.locator("#source-alert")).to_be_hidden()
    expect(page.locator("#job-alert")).to_be_hidden()
    expect(make_image).to_be_disabled()

    # Alice's key: the probe runs again, then the dry run, the job, the result.
    sent: list[tuple[str, str, str | None]] = []
    page.on(
        "request",
        lambda request: sent.append(
            (request.method, request.url, request.headers.get("authorization"))
        ),
    )
    key_field.fill(ALICE_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(key_message).to_have_attribute("data-state", "ok", timeout=STEP_MS)
    expect(key_field).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#facts")).to_contain_text(size(1920, 1280) + " px", timeout=STEP_MS)
    expect(planned(page)).to_have_text(size(300, 200), timeout=STEP_MS)
    make_image.click()
    expect(page.locator("#outcome")).to_be_visible(timeout=JOB_MS)
    expect(page.locator("#job-status")).to_contain_text("Done")
    expect(page.locator("#result-meta")).to_contain_text(size(300, 200) + " · JPEG")
    page.wait_for_function(
        "() => document.getElementById('result-img').naturalWidth === 300", timeout=STEP_MS
    )

    # Every API request carried the key; the job was followed by long-polls (an
    # EventSource cannot send the header) and its result fetched with the key.
    api = [
        (method, urllib.parse.urlsplit(url), authorization)
        for method, url, authorization in sent
        if urllib.parse.urlsplit(url).path.startswith(("/probe", "/jobs"))
    ]
    assert api, sent
    assert all(auth == f"Bearer {ALICE_KEY}" for _, _, auth in api), api
    paths = [(method, url.path) for method, url, _ in api]
    assert ("POST", "/probe") in paths, paths
    assert ("POST", "/jobs") in paths, paths
    waits = [url for method, url, _ in api if method == "GET" and "wait=" in url.query]
    assert waits, paths
    job_id = waits[0].path.split("/")[2]
    assert ("GET", f"/jobs/{job_id}/download") in paths, paths
    assert not any(path.endswith("/events") for _, path in paths), paths

    # The job is alice's: her key lists it; no key is refused.
    with httpx.Client(base_url=server.url) as client:
        listed = client.get("/jobs", headers={"Authorization": f"Bearer {ALICE_KEY}"})
        assert listed.status_code == 200, listed.text
        jobs = {job["id"]: job for job in listed.json()["jobs"]}
        assert jobs[job_id]["status"] == "completed"
        assert client.get(f"/jobs/{job_id}").status_code == 401

    # The download is the result fetched with the key (a link to the API would lack it).
    expect(page.locator("#download")).to_have_attribute("href", re.compile("^blob:"))
    with page.expect_download(timeout=STEP_MS) as started:
        page.get_by_role("link", name=re.compile("^Download JPEG")).click()
    download = started.value
    assert download.failure() is None
    assert download.suggested_filename == f"{job_id}.jpg", download.suggested_filename
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(saved) as image:
        assert (image.format, image.size) == ("JPEG", (300, 200))

    # A reload in the same tab keeps the key (sessionStorage): the probe just works.
    page.reload()
    expect(page.locator("#health-text")).to_have_text(re.compile("^Ready"), timeout=STEP_MS)
    expect(key_field).to_be_visible()
    expect(key_field).to_have_value(ALICE_KEY)
    choose_photo(page)
    expect(planned(page)).to_have_text(size(300, 200), timeout=STEP_MS)
    expect(key_message).to_have_attribute("data-state", "ok")

    # Forgetting it: the next request is refused again, and the field asks for a key.
    page.get_by_role("button", name="Forget the key").click()
    assert page.evaluate("() => sessionStorage.length") == 0
    page.get_by_label("Width", exact=True).fill("320")
    expect(key_message).to_contain_text(needs_a_key, ignore_case=True, timeout=STEP_MS)
    expect(make_image).to_be_disabled()
    assert console.problems(http_errors=True) == []


def test_page_and_its_files_over_http(server: AppProcess) -> None:
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304

        # Every file is referred to with its hash, and cached for good under that hash.
        references = re.findall(r'"/static/([^"?]+)\?v=([0-9a-f]+)"', page.text)
        assert {name for name, _ in references} == {"app.js", "style.css", "icon.svg"}
        types = {
            "app.js": "text/javascript; charset=utf-8",
            "style.css": "text/css; charset=utf-8",
            "icon.svg": "image/svg+xml",
        }
        for name, version in references:
            fresh = client.get(f"/static/{name}", params={"v": version})
            assert fresh.status_code == 200, name
            assert fresh.headers["content-type"] == types[name]
            assert fresh.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert fresh.headers["x-content-type-options"] == "nosniff"
            # No hash, or an old one: revalidated every time, so never stale.
            plain = client.get(f"/static/{name}", params={"v": "0ld"})
            assert plain.headers["cache-control"] == "no-cache"
            assert plain.content == fresh.content
            again = client.get(f"/static/{name}", headers={"If-None-Match": fresh.headers["etag"]})
            assert again.status_code == 304
            assert client.head(f"/static/{name}").status_code == 200
            # Nothing from elsewhere: no URL but the SVG namespace.
            assert re.findall(r"https?://[^\s\"')]+", fresh.text) in (
                [],
                ["http://www.w3.org/2000/svg"],
            )
        assert client.get("/static/index.html").text == page.text

        missing = client.get("/static/nothing.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"

    # Paths sent as they are (httpx would resolve the dots): nothing outside static/.
    for path in (
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/static/.%2e/.%2e/pyproject.toml",
        "/static/",
        "/static/%2fetc%2fpasswd",  # a decoded `%2f` doubles a slash: no route, no redirect
    ):
        status, _, body = raw_get(server.url, path)
        assert status == 404, (path, status)
        assert b"import" not in body, path


def raw_get(url: str, path: str) -> tuple[int, str, bytes]:
    """GET `path` exactly as written: status, Location (path part), body."""
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=STEP_MS / 1000)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        location = urllib.parse.urlsplit(response.getheader("Location") or "").path
        return response.status, location, response.read()
    finally:
        connection.close()


def test_page_blueprint_keeps_the_api_routes(server: AppProcess) -> None:
    """`/` and `/static/` are the page's; the API answers as before beside them."""
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/health").json()["status"] == "healthy"
        assert client.post("/").status_code == 405
        assert client.get("/jobs/not-a-job").status_code == 404

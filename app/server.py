"""Builds the app and serves it with hypercorn on trio.

`create_app()` only builds and wires: the service (store, queue, worker pool) starts in
the app's serving lifecycle, so `hypercorn -k trio 'app:create_app()'` and `python -m app`
run the same code.
"""

from __future__ import annotations

import logging
import math
import signal
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio import tcp_server as hypercorn_tcp_server
from quart import Response, has_request_context, request
from werkzeug.exceptions import HTTPException

from app import errors
from app.admission import UploadGate
from app.allocator import keep_freed_memory
from app.application import ImgJobsApp
from app.docs import blueprint as docs_blueprint
from app.feeds import blueprint as feeds_blueprint
from app.logs import configure_logging, log_event
from app.metrics import blueprint as metrics_blueprint
from app.page import blueprint as page_blueprint
from app.routes import MAX_WAIT_S, blueprint, json_response
from app.service import open_service
from app.settings import Settings, load_settings

__all__ = ["create_app", "hypercorn_config", "serve"]

# What a JSON envelope around the base64 image may add (keys, a data: prefix, line breaks).
BODY_SLACK_BYTES = 64 * 1024
PROBLEM_JSON = "application/problem+json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
RECEIVE_BYTES = 256 * 1024
# Upload bodies streaming at once (app/admission.py). 50 uploads of 16 MB at once, pool 2:
# the first job starts after 0.4 s instead of 2.1 s, the server spends 61-68 ms of CPU per
# job instead of 76-84, GET /health p95 meanwhile is 9 ms instead of 100 (bench.pool_sizes).
UPLOAD_PLACES = 2
UPLOAD_MAX_WAIT_S = 2.0
UPLOAD_IDLE_S = 0.1
# What a worker node (SERVICE_ROLE=worker) answers; every other path is a 421.
WORKER_NODE_PATHS = frozenset({"/health", "/metrics"})
# hypercorn reads this many body messages ahead of the app: little for a waiting upload.
APP_QUEUE_MESSAGES = 2


def body_limit(settings: Settings) -> int:
    """The largest request body that can carry an image of MAX_UPLOAD_SIZE bytes."""
    encoded = 4 * math.ceil(settings.max_upload_bytes / 3)
    return encoded + encoded // 64 + BODY_SLACK_BYTES


def render(error: errors.ServiceError) -> Response:
    headers = error.headers()
    if has_request_context() and request.method in BODY_METHODS:
        # The body may be unread (refused from its headers, or mid-stream): without this,
        # the connection would stall with the client still sending. httpx, curl and
        # browsers read the answer when the server closes early.
        headers["Connection"] = "close"
    return json_response(
        error.problem(), status=error.status, headers=headers, content_type=PROBLEM_JSON
    )


def _from_http(exc: HTTPException) -> errors.ServiceError:
    """Quart/werkzeug errors (routing, body limits) in the service's own shape."""
    code = exc.code or 500
    if code == 404:
        return errors.NotFound("no such resource; see the API in the README")
    if code == 405:
        allowed = sorted(getattr(exc, "valid_methods", None) or [])
        return errors.MethodNotAllowed(
            f"method not allowed here; allowed: {', '.join(allowed)}", allowed=allowed
        )
    if code == 413:
        return errors.PayloadTooLarge("the request body exceeds the upload limit")
    if code == 408:
        return errors.BadRequest(
            "the request body was not received in time", code="request_timeout"
        )
    if 400 <= code < 500:
        return errors.BadRequest(exc.description or "bad request")
    return errors.ServiceError()


def read_uploads_in_bigger_chunks() -> None:
    """Let hypercorn's trio server read up to 256 KiB per receive, instead of 64 KiB.

    Every read of a request body goes through h11, an ASGI message, Quart's body and a
    task wake-up; a 1 MB upload took 16 rounds of that. Measured with a raw-socket client
    sending 1 MB JPEGs: 7.3 -> 5.9 ms of server CPU per job. A process-wide setting of the
    server library, made once, idempotent; harmless if hypercorn ever drops the name.
    """
    if getattr(hypercorn_tcp_server, "MAX_RECV", RECEIVE_BYTES) < RECEIVE_BYTES:
        hypercorn_tcp_server.MAX_RECV = RECEIVE_BYTES


def create_app(settings: Settings | None = None) -> ImgJobsApp:
    """Build the application; nothing starts until it is served."""
    settings = load_settings() if settings is None else settings
    read_uploads_in_bigger_chunks()
    keep_freed_memory()
    app = ImgJobsApp(__name__)
    # `/jobs//download` is no route (a 404 problem), not an HTML redirect to `/jobs/download`.
    app.url_map.merge_slashes = False
    app.settings = settings
    app.config["MAX_CONTENT_LENGTH"] = body_limit(settings)
    app.config["BODY_TIMEOUT"] = settings.body_timeout_s
    app.config["RESPONSE_TIMEOUT"] = 60
    # The service stops itself within SHUTDOWN_GRACE; this is the outer deadline.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = settings.shutdown_grace_s + 10
    app.register_blueprint(blueprint)
    app.register_blueprint(feeds_blueprint)
    app.register_blueprint(metrics_blueprint)
    app.register_blueprint(docs_blueprint)
    app.register_blueprint(page_blueprint)
    app.uploads = UploadGate(UPLOAD_PLACES, max_wait_s=UPLOAD_MAX_WAIT_S, idle_s=UPLOAD_IDLE_S)
    stop = trio.Event()
    stopped = trio.Event()

    async def serve_service(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with open_service(settings) as service:
                app.service = service
                task_status.started()
                await stop.wait()
        finally:
            stopped.set()

    @app.before_serving
    async def start_service() -> None:
        configure_logging(settings.log_level)
        await app.nursery.start(serve_service)

    @app.after_serving
    async def stop_service() -> None:
        stop.set()
        await stopped.wait()

    if settings.service_role == "worker":

        @app.before_request
        async def serve_worker_routes_only() -> None:
            if request.path not in WORKER_NODE_PATHS:
                raise errors.WrongNode(
                    "this node only runs jobs (SERVICE_ROLE=worker) and serves /health and"
                    " /metrics; send API requests to an API node"
                )

    @app.errorhandler(errors.ServiceError)
    async def service_error(error: errors.ServiceError) -> Response:
        return render(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return render(_from_http(error))

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log_event("request.error", level=logging.ERROR, exc=True)
        return render(errors.ServiceError())

    return app


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_grace_s
    config.keep_alive_timeout = 5
    # Longer than the longest long-poll (GET /jobs/{id}?wait=60) so none is cut; slow
    # request bodies are bounded by BODY_TIMEOUT instead.
    config.read_timeout = int(MAX_WAIT_S) + 30
    config.max_app_queue_size = APP_QUEUE_MESSAGES
    config.accesslog = None
    config.include_server_header = False  # no library names or versions in responses
    # Through the root handler, so hypercorn's lines are JSON like ours.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def _wait_for_signal(app: ImgJobsApp) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log_event("server.signal", signal=signal.Signals(signum).name)
            # Before hypercorn drains open connections: take no more jobs meanwhile.
            if hasattr(app, "service"):
                app.service.stop_intake()
            return


async def serve(
    settings: Settings,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    **overrides: Any,
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully; reports the bound URLs."""
    app = create_app(settings)
    config = hypercorn_config(settings)
    for name, value in overrides.items():
        setattr(config, name, value)
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=partial(_wait_for_signal, app))
        )
        # The handshake that tests and scripts wait for (PORT=0 picks a free port).
        # Logged whatever LOG_LEVEL says (up to WARNING): scripts wait for this line.
        log_event("server.listening", level=logging.WARNING, urls=urls)
        task_status.started(urls)

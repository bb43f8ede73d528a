"""Prometheus metrics: what the service counts, and `GET /metrics` to read it.

Names follow imgproxy's (`imgproxy_requests_total`, `imgproxy_workers`...)::

    imgjobs_requests_total{method, route, status}     requests answered, 4xx and 5xx included
    imgjobs_request_duration_seconds{method, route}   histogram: arrival to response ready
    imgjobs_jobs_total{status, code}                  jobs ended `completed` (code "") or `failed`
    imgjobs_job_duration_seconds{phase}               histogram: `queue` is created -> started,
                                                      `processing` is started -> ended
    imgjobs_queue_depth, imgjobs_queue_capacity       read from the queue at each scrape
    imgjobs_workers, imgjobs_workers_busy             read from the pool at each scrape
    imgjobs_upload_bytes_total                        image bytes of accepted uploads
    imgjobs_webhook_deliveries_total{outcome}         delivered | failed | retried
    imgjobs_build_info{version, pillow}               always 1
    process_*                                         the process's CPU, memory, start time

`route` is the URL rule (`/jobs/<job_id>`), or `unmatched` for a 404 or 405 of routing: never
the path, which a client chooses. `method` is one of the standard methods or `other`, and a
job's failure `code` comes from the fixed set the worker pool reports: every label is bounded.

**Several server processes.** Each process counts what it does in a registry of its own and
serves only its own numbers: every process is scraped as a target of its own, and the
service's totals are sums over targets (`sum without (instance) (rate(...))`). A process
alone serves the service's totals. prometheus_client's multiprocess mode was not chosen:

- processes sharing one database may run on several hosts (README, Deployment); its files
  sum the processes of one host only, so sums over targets would be needed anyway;
- it is switched on by an environment variable read when prometheus_client is first
  imported, and keeps values in files of a directory that must be emptied before the first
  process starts: separately started `python -m app` processes have no parent to do that,
  and several apps in one process (the tests) would share values;
- its gauges are files too: another process's queue depth and busy workers cannot be read
  at scrape time, they would have to be written on every change.

The price: `hypercorn --workers N` puts N processes behind one socket, and a scrape reaches
one of them, so it cannot be scraped process by process. With metrics, run N processes on
N ports (`python -m app`, or hypercorn with one worker each) and scrape each.

The registry belongs to the service (`Service.metrics`, created by the composition root),
so two apps in one process never mix their numbers.
"""

from __future__ import annotations

import hmac
import importlib.metadata
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Literal, cast, get_args

import PIL
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from quart import Blueprint, Response, current_app, request

from app.errors import Unauthorized

if TYPE_CHECKING:
    from app.application import ImgJobsApp
    from app.queue import QueueStatistics
    from app.service import Service
    from app.workers import PoolStatistics

__all__ = ["WEBHOOK_OUTCOMES", "Metrics", "WebhookOutcome", "blueprint"]

blueprint = Blueprint("metrics", __name__)

#: What a webhook delivery attempt came to: `delivered` (a 2xx answer), `retried` (it failed
#: and another attempt is scheduled), `failed` (it failed and no attempt is left).
WebhookOutcome = Literal["delivered", "failed", "retried"]
WEBHOOK_OUTCOMES: Final[tuple[WebhookOutcome, ...]] = get_args(WebhookOutcome)

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED: Final = "unmatched"
# Jobs: 10 ms (a thumbnail of a small image, a corrupt header) to 60 s (JOB_TIMEOUT's default).
JOB_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
# Requests: a GET takes about a millisecond, an upload up to seconds, a long poll up to 60 s.
REQUEST_BUCKETS_S: Final = (0.001, 0.0025, 0.005, *JOB_BUCKETS_S)
# Where the before-request hook leaves the arrival time: the request's own ASGI scope, which
# lives exactly as long as the request (nothing to clean up when a client goes away).
_ARRIVED: Final = "imgjobs.metrics.arrived"


class Metrics:
    """The metrics of one running service, in a registry of its own.

    The composition root creates it; the worker pool, the submit path and (later) the
    webhook deliveries report to it. Every method is cheap and never blocks.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._requests = Counter(
            "imgjobs_requests_total",
            "HTTP requests answered, by method, route (the URL rule) and status code.",
            ("method", "route", "status"),
            registry=registry,
        )
        self._request_duration = Histogram(
            "imgjobs_request_duration_seconds",
            "Time from a request's arrival to its response being ready (a download's body "
            "is sent after), by method and route.",
            ("method", "route"),
            buckets=REQUEST_BUCKETS_S,
            registry=registry,
        )
        self._jobs = Counter(
            "imgjobs_jobs_total",
            "Jobs that reached a terminal state in this process: completed (code empty) or "
            "failed, with the failure's code.",
            ("status", "code"),
            registry=registry,
        )
        self._job_duration = Histogram(
            "imgjobs_job_duration_seconds",
            "Job phases: queue (created to started) and processing (started to ended).",
            ("phase",),
            buckets=JOB_BUCKETS_S,
            registry=registry,
        )
        self._upload_bytes = Counter(
            "imgjobs_upload_bytes_total",
            "Bytes of the images of accepted uploads (decoded, for base64 ones).",
            registry=registry,
        )
        self._webhooks = Counter(
            "imgjobs_webhook_deliveries_total",
            "Webhook delivery attempts, by outcome: delivered, retried (another attempt is "
            "scheduled) or failed (none is left).",
            ("outcome",),
            registry=registry,
        )
        build = Gauge(
            "imgjobs_build_info",
            "Always 1: the service's version and Pillow's (pillow-simd's ends in .post0).",
            ("version", "pillow"),
            registry=registry,
        )
        build.labels(_version(), PIL.__version__).set(1)
        ProcessCollector(registry=registry)
        # Series that exist before anything happens, so that rates start at 0, not absent.
        self._jobs.labels("completed", "")
        for outcome in WEBHOOK_OUTCOMES:
            self._webhooks.labels(outcome)
        self._queue_wait = self._job_duration.labels("queue")
        self._processing = self._job_duration.labels("processing")

    def track(
        self, queue: Callable[[], QueueStatistics], pool: Callable[[], PoolStatistics]
    ) -> None:
        """Report the queue's and the pool's state, read from these at every scrape."""
        self.registry.register(_ServiceGauges(queue, pool))

    def request_answered(self, method: str, route: str, status: int, duration_s: float) -> None:
        self._requests.labels(method, route, str(status)).inc()
        self._request_duration.labels(method, route).observe(duration_s)

    def job_started(self, *, queued_s: float) -> None:
        """A job left the queue for a worker after `queued_s` seconds (since its submit)."""
        # Clamped: `created_at` may come from another host's clock.
        self._queue_wait.observe(max(queued_s, 0.0))

    def job_ended(self, *, code: str | None, processing_s: float | None = None) -> None:
        """A job reached `completed` (`code` None) or `failed` with `code`; `processing_s`
        is None when no worker of this process ran it (e.g. `interrupted`)."""
        self._jobs.labels("completed" if code is None else "failed", code or "").inc()
        if processing_s is not None:
            self._processing.observe(processing_s)

    def upload_stored(self, size_bytes: int) -> None:
        """An upload of `size_bytes` became a job."""
        self._upload_bytes.inc(size_bytes)

    def webhook_delivery(self, outcome: WebhookOutcome) -> None:
        """One webhook delivery attempt ended with `outcome` (for the webhook module)."""
        self._webhooks.labels(outcome).inc()

    def exposition(self) -> bytes:
        """Every metric, in the Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(_WithoutCreated(self.registry))


#: The media type of `Metrics.exposition()`, the format every Prometheus server reads.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

_SERVICE_GAUGES: Final = (
    ("imgjobs_queue_depth", "Jobs waiting for a worker in this process's queue."),
    ("imgjobs_queue_capacity", "Jobs this process's queue holds before submits get 503."),
    ("imgjobs_workers", "Worker processes of this process's pool (WORKER_POOL_SIZE)."),
    ("imgjobs_workers_busy", "Workers of this process's pool running a job."),
)


class _ServiceGauges:
    """The queue's and the pool's state, read when scraped: no copy to keep up to date."""

    def __init__(
        self, queue: Callable[[], QueueStatistics], pool: Callable[[], PoolStatistics]
    ) -> None:
        self._queue = queue
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        queue, pool = self._queue(), self._pool()
        values = (queue.queued, queue.capacity, pool.size, pool.busy)
        for (name, documentation), value in zip(_SERVICE_GAUGES, values, strict=True):
            yield GaugeMetricFamily(name, documentation, value=value)

    def describe(self) -> Iterator[Metric]:
        # Lets the registry refuse a duplicate name without reading the service.
        for name, documentation in _SERVICE_GAUGES:
            yield GaugeMetricFamily(name, documentation)


class _WithoutCreated:
    """A registry's metrics without the `_created` samples prometheus_client adds to every
    counter and histogram: in the text format each would be one more series per label set,
    holding a timestamp nobody queries (Prometheus spots counter resets without them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            created = metric.name + "_created"
            metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric


def _version() -> str:
    try:
        return importlib.metadata.version("imgjobs")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that is not installed
        return "0+unknown"


def _serving_metrics() -> Metrics | None:
    """The metrics of the service this app runs, or None before it has started one."""
    service: Service | None = getattr(current_app, "service", None)
    return None if service is None else service.metrics


def _scope() -> MutableMapping[str, Any]:
    return cast(MutableMapping[str, Any], request.scope)


@blueprint.before_app_request
async def _note_arrival() -> None:
    _scope()[_ARRIVED] = time.monotonic()


@blueprint.after_app_request
async def _count_request(response: Response) -> Response:
    # Quart runs this for every response it makes, those of error handlers included
    # (404 and 405 of routing, 4xx raised by handlers, the opaque 500).
    metrics = _serving_metrics()
    if metrics is not None:
        arrived: float = _scope().get(_ARRIVED, time.monotonic())
        method = request.method if request.method in METHODS else "other"
        rule = request.url_rule
        route = UNMATCHED if rule is None else rule.rule
        metrics.request_answered(method, route, response.status_code, time.monotonic() - arrived)
    return response


@blueprint.get("/metrics")
async def get_metrics() -> Response:
    """Every metric of this process in the Prometheus text format; with METRICS_TOKEN set,
    only for `Authorization: Bearer <METRICS_TOKEN>` (401 otherwise)."""
    service = cast("ImgJobsApp", current_app).service
    token = service.settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("the metrics need Authorization: Bearer <METRICS_TOKEN>")
    return Response(service.metrics.exposition(), content_type=CONTENT_TYPE)

"""What a job's row looks like on the wire: its view, and the webhook event announcing its end."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from app.delivery_store import DeliveryRecord
from app.models import JobError, JobView, WebhookView
from app.outputs import decode_results, document_of
from app.store import JobRecord

__all__ = ["WebhookEvent", "event_body", "job_view"]


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a webhook: `job.completed` or `job.failed`, when, and the job's view."""

    type: str
    timestamp: datetime
    data: JobView


_encoder = msgspec.json.Encoder()


def job_view(record: JobRecord, delivery: DeliveryRecord | None = None) -> JobView:
    """The job as `GET /jobs/{id}` shows it; with `delivery`, its webhook's state."""
    completed = record.status == "completed"
    return JobView(
        id=record.id,
        status=record.status,
        input_path=record.input_key,
        output_path=record.output_key,
        operation=record.operation,
        width=record.width,
        height=record.height,
        output_format=record.output_format,
        created_at=_timestamp(record.created_at),
        updated_at=_timestamp(record.updated_at),
        error=(
            JobError(code=record.error_code or "failed", message=record.error_message or "")
            if record.status == "failed"
            else None
        ),
        result_width=record.result_width if completed else None,
        result_height=record.result_height if completed else None,
        result_bytes=record.result_bytes if completed else None,
        spec=document_of(record),
        variants=(
            {name: result.view(record.id, name) for name, result in results.items()}
            if (results := decode_results(record.results)) and completed
            else None
        ),
        callback_url=record.callback_url,
        metadata=_metadata(record.metadata),
        webhook=None if delivery is None else _webhook_view(delivery),
        reused=record.reused,
    )


def event_body(record: JobRecord, delivery: DeliveryRecord) -> bytes:
    """The JSON a webhook sends: fixed at its first attempt, so retries send the same bytes
    (the view inside leaves out the `webhook` member, which the delivery itself changes)."""
    event = WebhookEvent(
        type=delivery.event,
        timestamp=_timestamp(record.finished_at or record.updated_at),
        data=job_view(record),
    )
    return _encoder.encode(event)


def _webhook_view(delivery: DeliveryRecord) -> WebhookView:
    return WebhookView(
        status=delivery.status,
        attempts=delivery.attempts,
        last_status=delivery.last_status,
        next_attempt_at=(
            _timestamp(delivery.next_attempt_at)
            if delivery.status == "pending" and delivery.next_attempt_at is not None
            else None
        ),
    )


def _metadata(data: bytes | None) -> dict[str, Any] | None:
    return None if data is None else msgspec.json.decode(data, type=dict[str, Any])


def _timestamp(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)

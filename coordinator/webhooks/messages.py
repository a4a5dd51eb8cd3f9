"""Which webhook messages a job change causes, and what they say: pure, no I/O.

A job's own `webhook_url` gets the events in its `webhook_events` (by default completed,
failed, cancelled); each of its tenant's subscriptions gets the events it names. A URL named
twice gets one message. The body follows the Standard Webhooks payload shape:
`{"type": "job.completed", "timestamp": "<RFC 3339>", "data": {...the job's event...}}`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence

import msgspec

from comfyfleet.coordinator.feed import job_event_data
from comfyfleet.coordinator.model import JobRecord, WebhookMessage
from comfyfleet.coordinator.tenants import Subscription
from comfyfleet.shared.status import JobStatus

STATUS_EVENT: dict[JobStatus, str] = {
    JobStatus.RUNNING: "running",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


def event_of(old: JobRecord | None, new: JobRecord) -> str | None:
    """The event a change is, when it is one webhooks tell of: a status newly entered."""
    if old is not None and old.status == new.status:
        return None
    return STATUS_EVENT.get(new.status)


def targets(job: JobRecord, event: str, subscriptions: Sequence[Subscription]) -> list[str]:
    """The URLs that want `event` of this job, each once, the job's own first."""
    urls: list[str] = []
    if job.spec.webhook_url is not None and event in job.spec.webhook_events:
        urls.append(job.spec.webhook_url)
    urls.extend(s.url for s in subscriptions if event in s.events)
    return list(dict.fromkeys(urls))


def payload(job: JobRecord, event: str, now: float) -> str:
    at = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat().replace("+00:00", "Z")
    body = {"type": f"job.{event}", "timestamp": at, "data": job_event_data(job)}
    return msgspec.json.encode(body).decode()


def messages_for(
    old: JobRecord | None,
    new: JobRecord,
    subscriptions: Sequence[Subscription],
    now: float,
    new_id: Callable[[], str],
) -> list[WebhookMessage]:
    """The outbox messages a change from `old` to `new` causes (none for most changes)."""
    event = event_of(old, new)
    if event is None:
        return []
    urls = targets(new, event, subscriptions)
    if not urls:
        return []
    body = payload(new, event, now)
    return [
        WebhookMessage(
            id=new_id(),
            job_id=new.id,
            tenant=new.tenant,
            url=url,
            event=f"job.{event}",
            payload=body,
            created_at=now,
            next_at=now,
        )
        for url in urls
    ]

"""Comfy API v2's JSON for a fleet job: the `Job`, its `Output`s and a list item (pure).

A v2 job id is its ComfyUI prompt_id (a UUID); the fleet job is `job_id_for(tenant, id)`.
What v2 adds to a prompt (string `metadata` labels, the advisory `priority`) rides in the job's
`metadata["comfy_v2"]`. An output's asset id is `<job id>.<n>`, n its place among the job's
stored outputs: stable, durable, and only ever resolved inside the caller's own tenant.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from comfyfleet.coordinator.comfy.history import comfy_refs
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.status import JobStatus

__all__ = [
    "RETENTION_S",
    "V2",
    "JobView",
    "job_json",
    "list_item",
    "output_id",
    "outputs_json",
    "parse_job_id",
    "parse_output_id",
    "v2_status",
]

V2 = "comfy_v2"  # the metadata key of a job submitted through /api/v2/jobs
# v2 requires a retention deadline; the fleet removes nothing by itself yet, so this is the
# promise it makes: a job and its outputs stay at least this long
RETENTION_S = 30 * 86_400.0
TERMINAL = ("succeeded", "canceled", "failed", "expired")
_OUTPUT_KIND = {
    "images": "image",
    "gifs": "video",
    "video": "video",
    "audio": "audio",
    "text": "text",
    "files": "file",
    "latents": "latent",
}
_WAITING = (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.ASSIGNED)


@dataclass(frozen=True, slots=True)
class JobView:
    """What the handler adds to the record: where the client reached us, the job's place in
    its tenant's queue, and its live progress."""

    base: str
    queue_position: int | None = None
    progress: dict[str, Any] | None = None


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def parse_job_id(raw: str) -> str | None:
    """The canonical form of a v2 job id (a UUID), or None for anything else."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def output_id(job_uuid: str, index: int) -> str:
    return f"{job_uuid}.{index}"


def parse_output_id(raw: str) -> tuple[str, int] | None:
    head, dot, tail = raw.rpartition(".")
    job_uuid = parse_job_id(head) if dot else None
    if job_uuid is None or not tail.isdigit() or len(tail) > 6:
        return None
    return job_uuid, int(tail)


def v2_meta(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = metadata.get(V2)
    return dict(raw) if isinstance(raw, Mapping) else None


def v2_status(job: JobRecord) -> str:
    if job.status == JobStatus.COMPLETED:
        return "succeeded"
    if job.status == JobStatus.FAILED:
        return "failed"
    if job.status == JobStatus.CANCELLED:
        return "canceled"
    if job.desired == "cancel":
        return "canceling"
    return "running" if job.status == JobStatus.RUNNING else "queued"


def _ended_at(job: JobRecord) -> float | None:
    if job.status not in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
        return None
    return job.timestamps.get(job.status.value, job.updated_at)


def outputs_json(job: JobRecord, job_uuid: str, base: str) -> list[dict[str, Any]]:
    """The job's outputs as v2 `Output`s (once it COMPLETED: before, none is verified)."""
    if job.status != JobStatus.COMPLETED:
        return []
    expires = iso(job.created_at + RETENTION_S)
    out = []
    for n, (node, key, ref, entry) in enumerate(comfy_refs(job)):
        asset = output_id(job_uuid, n)
        content_type = str(entry.get("content_type") or "application/octet-stream")
        if content_type == "application/octet-stream":  # the agent did not know it
            content_type = mimetypes.guess_type(ref.filename)[0] or content_type
        out.append(
            {
                "node_id": node,
                "name": ref.filename,
                "type": _OUTPUT_KIND.get(key, "file"),
                "content_type": content_type,
                "size_bytes": int(entry.get("size") or 0),
                "id": asset,
                "hash": None,  # blake3 is not computed for outputs (v2: "null until computed")
                "url": f"{base}/api/v2/assets/{asset}/content",
                "url_expires_at": expires,
                "job_id": job_uuid,
            }
        )
    return out


def error_json(job: JobRecord) -> dict[str, Any] | None:
    """`job.error`: ComfyUI's own execution error when the agent kept it, else the fleet's."""
    if job.status != JobStatus.FAILED:
        return None
    err = job.error or {}
    details = err.get("details")
    comfy = details.get("comfy") if isinstance(details, Mapping) else None
    data = comfy.get("data") if isinstance(comfy, Mapping) else None
    if isinstance(comfy, Mapping) and comfy.get("type") == "execution_error":
        if isinstance(data, Mapping):
            trace = data.get("traceback")
            return {
                "code": "node_execution_error",
                "message": str(data.get("exception_message") or err.get("message") or "failed"),
                "node_id": _text(data.get("node_id")),
                "class_type": _text(data.get("node_type")),
                "traceback": "".join(map(str, trace)) if isinstance(trace, list) else None,
            }
    return {
        "code": str(err.get("code") or "failed"),
        "message": str(err.get("message") or "the job failed"),
        "node_id": _text(err.get("node_id")),
        "class_type": _text(err.get("node_type")),
        "traceback": None,
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _reused(job: JobRecord) -> bool:
    return any(isinstance(p, Mapping) and p.get("cached") for p in job.profile)


def job_json(job: JobRecord, job_uuid: str, view: JobView) -> dict[str, Any]:
    started = job.timestamps.get(JobStatus.RUNNING.value)
    ended = _ended_at(job)
    status = v2_status(job)
    base = f"{view.base}/api/v2/jobs/{job_uuid}"
    body: dict[str, Any] = {
        "id": job_uuid,
        "status": status,
        "created_at": iso(job.created_at),
        "started_at": iso(started),
        "completed_at": iso(ended),
        "expires_at": iso(job.created_at + RETENTION_S),
        "queue_position": view.queue_position if status == "queued" else None,
        "progress": view.progress if status in ("running", "canceling", "succeeded") else None,
        "outputs": outputs_json(job, job_uuid, view.base),
        "error": error_json(job),
        "metrics": {
            "queue_ms": None if started is None else int((started - job.created_at) * 1000),
            "execution_ms": None
            if started is None or ended is None
            else int((ended - started) * 1000),
        },
        "outputs_reused": _reused(job),
        "urls": {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"},
    }
    meta = v2_meta(job.spec.metadata) or {}
    if meta.get("metadata") is not None:
        body["metadata"] = meta["metadata"]
    if meta.get("priority") is not None:
        body["priority"] = meta["priority"]
    return body


def list_item(job: JobRecord, job_uuid: str, view: JobView) -> dict[str, Any]:
    """A `GET /api/v2/jobs` item: the job, plus the summary times the SDK reads."""
    body = job_json(job, job_uuid, view)
    body["create_time"] = body["created_at"]
    body["update_time"] = iso(job.updated_at or job.created_at)
    return body


def waiting(job: JobRecord) -> bool:
    return job.status in _WAITING and job.desired != "cancel"

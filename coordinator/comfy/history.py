"""`/history` and `/queue` entries built from fleet job records (pure).

A job that came through the facade keeps its prompt (`metadata["comfy"]`), its outputs with
ComfyUI's own file names, its timestamps and its error, all in the store, so these answers are
rebuilt from the record alone and survive any restart. Shapes are ComfyUI 0.3.64's
(tests/fixtures/comfyui-traces): a history entry is
`{"prompt": [number, prompt_id, graph, extra_data, outputs], "outputs", "status", "meta"}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from comfyfleet.coordinator.comfy.files import FileRef, job_file_ref
from comfyfleet.coordinator.comfy.prompts import ComfyMeta, meta_of
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.status import JobStatus

__all__ = [
    "comfy_refs",
    "history_entry",
    "in_history",
    "interrupted_data",
    "error_data",
    "queue_item",
    "queue_lists",
    "stamp",
]

_WAITING = (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.ASSIGNED)


def stamp(t: float | None) -> int:
    """ComfyUI's event timestamps: integer milliseconds."""
    return int((t or 0.0) * 1000)


def comfy_refs(job: JobRecord) -> list[tuple[str, str, FileRef, dict[str, Any]]]:
    """(node id, ui key, ComfyUI's file reference, the stored output) for each output file.
    An output an agent stored without ComfyUI's names is named by its stored name."""
    out = []
    for entry in job.outputs:
        ref = entry.get("comfy_ref")
        if isinstance(ref, Mapping) and isinstance(ref.get("filename"), str):
            file = FileRef(
                ref["filename"], str(ref.get("subfolder") or ""), str(ref.get("type") or "output")
            )
            key = str(ref.get("key") or "images")
        else:
            file = FileRef(str(entry.get("name")), "", str(entry.get("kind") or "output"))
            key = "images"
        out.append((str(entry.get("node_id") or ""), key, file, entry))
    return out


def ui_outputs(job: JobRecord) -> dict[str, dict[str, list[dict[str, str]]]]:
    """`outputs` of a history entry: per node, per ui key, the files as the facade serves them."""
    nodes: dict[str, dict[str, list[dict[str, str]]]] = {}
    for node, key, ref, _ in comfy_refs(job):
        nodes.setdefault(node, {}).setdefault(key, []).append(job_file_ref(job.id, ref).as_dict())
    return nodes


def in_history(job: JobRecord) -> bool:
    """ComfyUI keeps a prompt in history once it ran to an end; a prompt removed while it
    waited never gets there."""
    if job.status == JobStatus.COMPLETED or job.status == JobStatus.FAILED:
        return True
    return job.status == JobStatus.CANCELLED and JobStatus.RUNNING.value in job.timestamps


def _executed(job: JobRecord) -> list[str]:
    return [str(p.get("node")) for p in job.profile if isinstance(p, Mapping) and p.get("node")]


def _cached(job: JobRecord) -> list[str]:
    return [
        str(p.get("node"))
        for p in job.profile
        if isinstance(p, Mapping) and p.get("cached") and p.get("node")
    ]


def _recorded(job: JobRecord, kind: str) -> dict[str, Any] | None:
    """The agent's own copy of ComfyUI's terminal message (kept in the error's details)."""
    details = (job.error or {}).get("details")
    raw = details.get("comfy") if isinstance(details, Mapping) else None
    if isinstance(raw, Mapping) and raw.get("type") == kind and isinstance(raw.get("data"), dict):
        return dict(raw["data"])
    return None


def error_data(job: JobRecord, prompt_id: str) -> dict[str, Any]:
    """`execution_error` for a failed job: ComfyUI's own payload when the agent kept it."""
    end = job.timestamps.get(JobStatus.FAILED.value, job.updated_at)
    data = _recorded(job, "execution_error")
    if data is not None:
        return {**data, "prompt_id": prompt_id}
    err = job.error or {}
    return {
        "prompt_id": prompt_id,
        "node_id": err.get("node_id"),
        "node_type": err.get("node_type"),
        "executed": _executed(job),
        "exception_message": str(err.get("message") or "failed"),
        "exception_type": str(err.get("code") or "Exception"),
        "traceback": [],
        "current_inputs": {},
        "current_outputs": {},
        "timestamp": stamp(end),
    }


def interrupted_data(
    job: JobRecord, prompt_id: str, node: str | None = None, node_type: str | None = None
) -> dict[str, Any]:
    end = job.timestamps.get(JobStatus.CANCELLED.value, job.updated_at)
    data = _recorded(job, "execution_interrupted")
    if data is not None:
        return {**data, "prompt_id": prompt_id}
    return {
        "prompt_id": prompt_id,
        "node_id": node,
        "node_type": node_type,
        "executed": _executed(job),
        "timestamp": stamp(end),
    }


def _messages(job: JobRecord, prompt_id: str) -> list[list[Any]]:
    started = job.timestamps.get(JobStatus.RUNNING.value)
    messages: list[list[Any]] = []
    if started is not None:
        messages.append(["execution_start", {"prompt_id": prompt_id, "timestamp": stamp(started)}])
        messages.append(
            [
                "execution_cached",
                {"nodes": _cached(job), "prompt_id": prompt_id, "timestamp": stamp(started)},
            ]
        )
    if job.status == JobStatus.COMPLETED:
        end = job.timestamps.get(JobStatus.COMPLETED.value, job.updated_at)
        messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": stamp(end)}])
    elif job.status == JobStatus.FAILED:
        messages.append(["execution_error", error_data(job, prompt_id)])
    elif job.status == JobStatus.CANCELLED:
        messages.append(["execution_interrupted", interrupted_data(job, prompt_id)])
    return messages


def queue_item(job: JobRecord, meta: ComfyMeta) -> list[Any]:
    """`[number, prompt_id, graph, extra_data, outputs to execute]`, as ComfyUI queues it."""
    return [meta.number, meta.prompt_id, job.spec.workflow, meta.extra_data, meta.outputs]


def history_entry(job: JobRecord) -> dict[str, Any] | None:
    """`{prompt_id: entry}` for a job ComfyUI would have in history; None otherwise."""
    meta = meta_of(job.spec.metadata)
    if meta is None or not in_history(job):
        return None
    completed = job.status == JobStatus.COMPLETED
    outputs = ui_outputs(job) if completed else {}
    return {
        meta.prompt_id: {
            "prompt": queue_item(job, meta),
            "outputs": outputs,
            "status": {
                "status_str": "success" if completed else "error",
                "completed": completed,
                "messages": _messages(job, meta.prompt_id),
            },
            "meta": {
                node: {
                    "node_id": node,
                    "display_node": node,
                    "parent_node": None,
                    "real_node_id": node,
                }
                for node in outputs
            },
        }
    }


def queue_lists(jobs: Iterable[JobRecord]) -> dict[str, list[list[Any]]]:
    """`GET /queue`: running and waiting prompts, each list in ComfyUI's order (by number)."""
    running: list[list[Any]] = []
    pending: list[list[Any]] = []
    for job in jobs:
        meta = meta_of(job.spec.metadata)
        if meta is None:
            continue
        if job.status == JobStatus.RUNNING:
            running.append(queue_item(job, meta))
        elif job.status in _WAITING:
            pending.append(queue_item(job, meta))
    pending.sort(key=lambda item: item[0])
    running.sort(key=lambda item: item[0])
    return {"queue_running": running, "queue_pending": pending}

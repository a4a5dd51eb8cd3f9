"""ComfyUI's Jobs API entries (`/api/jobs`), built from fleet job records (pure).

Recent ComfyUI (comfy_execution/jobs.py, server.py) shows queue and history as one list of
jobs: `{"id", "status", "priority", "create_time", "outputs_count",
"previewable_outputs_count", ...}` with status `pending`, `in_progress`, `completed`, `failed`
or `cancelled`; a history job adds its execution times, error, completion status and a
`preview_output`; `GET /api/jobs/{id}` adds the outputs, the execution status, the errors and the
workflow. Keys whose value is None are left out, as ComfyUI prunes them. Everything here is
derived from the `/history` and `/queue` entries this facade already builds (`history.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from comfyfleet.coordinator.comfy.history import history_entry, queue_item
from comfyfleet.coordinator.comfy.prompts import meta_of
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.status import JobStatus

__all__ = ["JOB_STATUSES", "job_entry", "list_jobs"]

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "pending", "in_progress", "completed", "failed", "cancelled"
)  # fmt: skip
JOB_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
SORTS = ("created_at", "execution_duration")
_PREVIEWABLE = frozenset({"images", "video", "audio", "3d", "text"})
_3D = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
_TEXT = (".txt", ".md", ".json")
_TEXT_PREVIEW = 1024
_WAITING = (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.ASSIGNED)


def _pruned(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if v is not None}


def _workflow_id(extra: Mapping[str, Any]) -> Any:
    info = extra.get("extra_pnginfo")
    workflow = info.get("workflow") if isinstance(info, Mapping) else None
    return workflow.get("id") if isinstance(workflow, Mapping) else None


def _ms(t: float) -> int:
    return int(t * 1000)


def _queued(job: JobRecord, status: str) -> dict[str, Any] | None:
    meta = meta_of(job.spec.metadata)
    if meta is None:
        return None
    number, prompt_id, _, extra, _ = queue_item(job, meta)
    return _pruned(
        {
            "id": prompt_id,
            "status": status,
            "priority": number,
            "create_time": _ms(job.created_at),
            "outputs_count": 0,
            "previewable_outputs_count": 0,
            "workflow_id": _workflow_id(extra),
        }
    )


def _as_file(item: Any) -> dict[str, Any] | None:
    """An output list item as a file dict (a 3D file may be listed by its bare name)."""
    if isinstance(item, dict):
        return item
    if isinstance(item, str) and item.lower().endswith(_3D):
        return {"filename": item, "type": "output", "subfolder": "", "mediaType": "3d"}
    return None


def _previewable(kind: str, item: Mapping[str, Any]) -> bool:
    fmt = str(item.get("format") or "")
    name = str(item.get("filename") or "").lower()
    return (
        kind in _PREVIEWABLE
        or fmt.startswith(("video/", "audio/"))
        or name.endswith(_3D)
        or name.endswith(_TEXT)
    )


def _is_text(kind: str, item: Mapping[str, Any]) -> bool:
    return kind == "text" or str(item.get("filename") or "").lower().endswith(_TEXT)


def _summary(outputs: Mapping[str, Any]) -> tuple[int, int, dict[str, Any] | None]:
    """(outputs counted, previewable ones, the preview): a saved visual output first, then
    any visual one, then a saved text file, then raw text."""
    count = previewable = 0
    picks: dict[str, dict[str, Any]] = {}
    for node, per_kind in outputs.items():
        if not isinstance(per_kind, Mapping):
            continue
        for kind, items in per_kind.items():
            if kind == "animated" or not isinstance(items, list):
                continue
            for raw in items:
                item = _as_file(raw)
                if item is None:
                    if kind == "text" and raw is not None and "raw_text" not in picks:
                        text = str(raw[0] if isinstance(raw, tuple | list) and raw else raw)
                        clip = {"content": text[:_TEXT_PREVIEW]}
                        if len(text) > _TEXT_PREVIEW:
                            clip["truncated"] = True  # type: ignore[assignment]
                        picks["raw_text"] = {**clip, "nodeId": node, "mediaType": kind}
                    continue
                count += 1
                if not _previewable(kind, item):
                    continue
                previewable += 1
                found = {**item, "nodeId": node}
                found.setdefault("mediaType", kind)
                slot = (
                    "text_file"
                    if _is_text(kind, item)
                    else "saved"
                    if item.get("type") == "output"
                    else "visual"
                )
                picks.setdefault(slot, found)
    for slot in ("saved", "visual", "text_file", "raw_text"):
        if slot in picks:
            return count, previewable, picks[slot]
    return count, previewable, None


def _ended(job: JobRecord, full: bool) -> dict[str, Any] | None:
    found = history_entry(job)
    if found is None:
        return None
    prompt_id, entry = next(iter(found.items()))
    number, _, graph, extra, _ = entry["prompt"]
    status_info = entry["status"]
    start = end = error = success = None
    interrupted = False
    node_errors: list[Any] = []
    for name, data in status_info["messages"]:
        if name == "execution_start":
            start = data.get("timestamp")
        elif name in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            success = data if name == "execution_success" else success
            error = data if name == "execution_error" else error
            interrupted = interrupted or name == "execution_interrupted"
        elif name == "execution_node_error":
            node_errors.append(data)
    ok = status_info["status_str"] == "success"
    status = COMPLETED if ok else CANCELLED if interrupted else FAILED
    completion = "success" if ok or success is not None else None
    outputs = entry["outputs"]
    count, previewable, preview = _summary(outputs)
    job_entry = _pruned(
        {
            "id": prompt_id,
            "status": status,
            "priority": number,
            "create_time": _ms(job.created_at),
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "completion_status": completion,
            "has_errors": bool(node_errors) or error is not None,
            "execution_error_count": len(node_errors) or int(error is not None),
            "outputs_count": count,
            "previewable_outputs_count": previewable,
            "preview_output": preview,
            "workflow_id": _workflow_id(extra),
        }
    )
    if full:
        job_entry["outputs"] = outputs
        job_entry["execution_status"] = status_info
        job_entry["execution_errors"] = node_errors
        job_entry["workflow"] = {"prompt": graph, "extra_data": extra}
    return job_entry


def job_entry(job: JobRecord) -> dict[str, Any] | None:
    """`GET /api/jobs/{id}`: a job as the Jobs API shows it, or None (not a ComfyUI job, or
    one removed while it waited: ComfyUI forgets those)."""
    if job.status == JobStatus.RUNNING:
        return _queued(job, IN_PROGRESS)
    if job.status in _WAITING:
        return _queued(job, PENDING)
    return _ended(job, full=True)


def _duration(entry: Mapping[str, Any]) -> int:
    start, end = entry.get("execution_start_time"), entry.get("execution_end_time")
    return int(end - start) if isinstance(start, int) and isinstance(end, int) else 0


def list_jobs(
    open_jobs: Iterable[JobRecord],
    ended: Iterable[JobRecord],
    statuses: Iterable[str],
    workflow_id: str | None,
    sort_by: str,
    descending: bool,
) -> list[dict[str, Any]]:
    """`GET /api/jobs` before paging: the jobs of the wanted statuses, sorted."""
    wanted = set(statuses)
    found: list[tuple[float, dict[str, Any]]] = []  # (exact creation time, entry)
    for job in open_jobs:
        status = IN_PROGRESS if job.status == JobStatus.RUNNING else PENDING
        entry = _queued(job, status) if status in wanted else None
        if entry is not None:
            found.append((job.created_at, entry))
    if wanted & {COMPLETED, FAILED, CANCELLED}:
        for job in ended:
            entry = _ended(job, full=False)
            if entry is not None and entry["status"] in wanted:
                found.append((job.created_at, entry))
    if workflow_id:
        found = [(t, e) for t, e in found if e.get("workflow_id") == workflow_id]

    def key(item: tuple[float, dict[str, Any]]) -> tuple[float, float]:
        t, entry = item
        return (_duration(entry) if sort_by == "execution_duration" else t), t

    found.sort(key=key, reverse=descending)
    return [entry for _, entry in found]

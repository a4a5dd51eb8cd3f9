"""ComfyUI's Jobs API: `GET /api/jobs`, `GET /api/jobs/{id}`, `POST /api/jobs/{id}/cancel`,
`POST /api/jobs/cancel`, answered as recent ComfyUI answers them (refusals are
`{"error": "<message>"}` with 400 or 404), over the caller's own prompts.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from comfyfleet.coordinator.comfy.auth import tenant
from comfyfleet.coordinator.comfy.errors import read_json
from comfyfleet.coordinator.comfy.jobs_api import JOB_STATUSES, SORTS, job_entry, list_jobs
from comfyfleet.coordinator.comfy.keys import DELETED, PORT
from comfyfleet.coordinator.comfy.port import FleetPort
from comfyfleet.coordinator.comfy.prompts import job_id_for, meta_of
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.status import TERMINAL

__all__ = ["ROUTES"]

MAX_BATCH = 10_000


def _refuse(message: str, status: int = 400, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _int(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


async def get_jobs(request: web.Request) -> web.Response:
    query = request.query
    statuses: list[str] = list(JOB_STATUSES)
    if query.get("status"):
        statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
        bad = [s for s in statuses if s not in JOB_STATUSES]
        if bad:
            return _refuse(
                f"Invalid status value(s): {', '.join(bad)[:200]}. "
                f"Valid values: {', '.join(JOB_STATUSES)}"
            )
    sort_by = query.get("sort_by", "created_at").lower()
    if sort_by not in SORTS:
        return _refuse("sort_by must be 'created_at' or 'execution_duration'")
    order = query.get("sort_order", "desc").lower()
    if order not in ("asc", "desc"):
        return _refuse("sort_order must be 'asc' or 'desc'")
    limit = None
    if "limit" in query:
        limit = _int(query["limit"])
        if limit is None:
            return _refuse("limit must be an integer")
        if limit <= 0:
            return _refuse("limit must be a positive integer")
    offset = 0
    if "offset" in query:
        given = _int(query["offset"])
        if given is None:
            return _refuse("offset must be an integer")
        offset = max(given, 0)
    who, port, deleted = tenant(request), request.app[PORT], request.app[DELETED]

    def collect() -> list[dict[str, Any]]:
        ended = (j for j in port.ended(who) if not deleted.hidden(who, j))
        return list_jobs(
            port.open_prompts(who), ended, statuses, query.get("workflow_id"), sort_by,
            order == "desc",
        )  # fmt: skip

    jobs = await asyncio.to_thread(collect)
    total = len(jobs)
    page = jobs[offset:] if limit is None else jobs[offset : offset + limit]
    pagination = {"offset": offset, "limit": limit, "total": total,
                  "has_more": offset + len(page) < total}  # fmt: skip
    return web.json_response({"jobs": page, "pagination": pagination})


def _find(port: FleetPort, who: str, job_id: str) -> Any:
    job = port.record(job_id_for(who, job_id))
    if job is None or job.tenant != who or meta_of(job.spec.metadata) is None:
        return None
    return job


async def get_job(request: web.Request) -> web.Response:
    who = tenant(request)
    job = await asyncio.to_thread(_find, request.app[PORT], who, request.match_info["job_id"])
    entry = None
    if job is not None and not request.app[DELETED].hidden(who, job):
        entry = job_entry(job)
    if entry is None:
        return _refuse("Job not found", 404)
    return web.json_response(entry)


def _cancel(port: FleetPort, who: str, job_id: str) -> bool:
    """Cancel a waiting or running prompt; False for one that ended or is unknown."""
    job = _find(port, who, job_id)
    live = port.live(job.id) if job is not None else None
    if live is None or live.status in TERMINAL:
        return False
    port.cancel(live.id)
    return True


async def cancel_job(request: web.Request) -> web.Response:
    cancelled = _cancel(request.app[PORT], tenant(request), request.match_info["job_id"])
    return web.json_response({"cancelled": cancelled})


async def cancel_jobs(request: web.Request) -> web.Response:
    try:
        body = await read_json(request)
    except InvalidInput:
        return _refuse("Request body must be valid JSON")
    ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or len(ids) > MAX_BATCH:
        return _refuse("job_ids must be a list")
    invalid = [i if isinstance(i, str) else repr(i)[:100] for i in ids if not _canonical(i)]
    if invalid:
        return _refuse("job_ids contains invalid id(s)", invalid_ids=invalid[:100])
    port, who = request.app[PORT], tenant(request)
    results = [_cancel(port, who, job_id) for job_id in ids]
    return web.json_response({"cancelled": any(results)})


def _canonical(value: Any) -> bool:
    """A prompt id as ComfyUI takes it: a UUID in canonical lowercase hyphenated form."""
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


ROUTES = [
    ("GET", "/api/jobs", get_jobs),
    ("POST", "/api/jobs/cancel", cancel_jobs),
    ("GET", "/api/jobs/{job_id}", get_job),
    ("POST", "/api/jobs/{job_id}/cancel", cancel_job),
]

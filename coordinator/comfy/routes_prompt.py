"""`/prompt`, `/queue`, `/interrupt`, `/history`: ComfyUI's queue, mapped onto fleet jobs.

Handlers parse, call the pure core (validation, prompts, history) and the fleet port, and let the
errors middleware shape refusals.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from comfyfleet.coordinator.comfy.admit import admit
from comfyfleet.coordinator.comfy.auth import tenant
from comfyfleet.coordinator.comfy.errors import read_json
from comfyfleet.coordinator.comfy.history import history_entry, queue_lists
from comfyfleet.coordinator.comfy.keys import DELETED, HUB, NUMBERS, PORT, UPLOADS
from comfyfleet.coordinator.comfy.prompts import job_id_for, meta_of, parse_prompt, to_spec
from comfyfleet.shared.comfy_validation import no_prompt
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.status import JobStatus

__all__ = ["ROUTES"]

_WAITING = (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.ASSIGNED)
MAX_IDS = 10_000  # ids in one POST /queue or /history delete


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def post_prompt(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or "prompt" not in body:
        return _json(no_prompt(), 400)
    req = parse_prompt(body, request.app[NUMBERS].next())
    who = tenant(request)
    port, uploads = request.app[PORT], request.app[UPLOADS]
    job_id = job_id_for(who, req.prompt_id)
    existing = port.live(job_id)
    if existing is not None:  # the same prompt_id again: the same job, answered again
        meta = meta_of(existing.spec.metadata)
        number = meta.number if meta is not None else req.number
        return _json({"prompt_id": req.prompt_id, "number": number, "node_errors": {}})
    admitted = await admit(port.fleet(), uploads, who, req.prompt, req.partial_targets)
    if admitted.refused is not None:
        return _json(admitted.refused.body(), 400)
    spec = to_spec(req, admitted.workflow, admitted.outputs, admitted.inputs)
    port.submit(spec, who, job_id)
    return _json(
        {"prompt_id": req.prompt_id, "number": req.number, "node_errors": admitted.node_errors}
    )


async def get_prompt(request: web.Request) -> web.Response:
    remaining = request.app[HUB].remaining(tenant(request))
    return _json({"exec_info": {"queue_remaining": remaining}})


async def get_queue(request: web.Request) -> web.Response:
    jobs = request.app[PORT].open_prompts(tenant(request))
    return _json(queue_lists(jobs))


def _ids(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_IDS:
        raise InvalidInput(key, f"must be a list of at most {MAX_IDS} prompt ids")
    return [str(v) for v in value]


async def _body_object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request, empty={})
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    return body


async def post_queue(request: web.Request) -> web.Response:
    """`clear`: drop every waiting prompt; `delete`: these waiting prompts. Running prompts
    stay (ComfyUI stops those with /interrupt)."""
    body = await _body_object(request)
    who, port = tenant(request), request.app[PORT]
    delete = _ids(body, "delete")
    waiting = {j.id for j in port.open_prompts(who) if j.status in _WAITING}
    if body.get("clear"):
        for job_id in waiting:
            port.cancel(job_id)
    for prompt_id in delete:
        job_id = job_id_for(who, prompt_id)
        if job_id in waiting:
            port.cancel(job_id)
    return web.Response(status=200)


async def post_interrupt(request: web.Request) -> web.Response:
    """With `prompt_id`: stop that prompt if it runs; without: the caller's running prompts."""
    body = await read_json(request, empty={})
    who, port = tenant(request), request.app[PORT]
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    running = [j for j in (port.live(i) for i in port.running_ids(who)) if j is not None]
    for job in running:
        if job.status != JobStatus.RUNNING:
            continue
        if prompt_id and job.id != job_id_for(who, str(prompt_id)):
            continue
        port.cancel(job.id)
    return web.Response(status=200)


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(name, "must be an integer") from None


async def get_history(request: web.Request) -> web.Response:
    """ComfyUI's order (oldest first) and paging: `max_items` newest, or from `offset`."""
    max_items = _int_param(request, "max_items")
    offset = _int_param(request, "offset")
    who, port, deleted = tenant(request), request.app[PORT], request.app[DELETED]

    def collect() -> list[tuple[str, Any]]:
        found: list[tuple[str, Any]] = []
        for job in port.ended(who):
            if deleted.hidden(who, job):
                continue
            entry = history_entry(job)
            if entry is not None:
                found.extend(entry.items())
                if offset is None and max_items is not None and len(found) >= max_items > 0:
                    break
        found.reverse()
        return found

    entries = await asyncio.to_thread(collect)
    start = offset if offset is not None and offset >= 0 else -1
    if start < 0 and max_items is not None:
        start = len(entries) - max_items
    start = max(start, 0)
    picked = entries[start:]
    if max_items is not None:
        picked = picked[: max(max_items, 0)]
    return _json(dict(picked))


async def get_history_one(request: web.Request) -> web.Response:
    who = tenant(request)
    job = request.app[PORT].record(job_id_for(who, request.match_info["prompt_id"]))
    if job is None or job.tenant != who or request.app[DELETED].hidden(who, job):
        return _json({})
    return _json(history_entry(job) or {})


async def post_history(request: web.Request) -> web.Response:
    body = await _body_object(request)
    who, deleted = tenant(request), request.app[DELETED]
    ids = [job_id_for(who, p) for p in _ids(body, "delete")]
    if body.get("clear"):
        await asyncio.to_thread(deleted.clear, who, time.time())
    if ids:
        await asyncio.to_thread(deleted.delete, who, ids)
    return web.Response(status=200)


async def post_free(request: web.Request) -> web.Response:
    """Accepted and ignored: each agent's ComfyUI manages its own memory (the agent frees it
    when a leak needs it)."""
    await read_json(request, empty={})
    return web.Response(status=200)


ROUTES = [
    ("POST", "/prompt", post_prompt),
    ("GET", "/prompt", get_prompt),
    ("GET", "/queue", get_queue),
    ("POST", "/queue", post_queue),
    ("POST", "/interrupt", post_interrupt),
    ("GET", "/history", get_history),
    ("GET", "/history/{prompt_id}", get_history_one),
    ("POST", "/history", post_history),
    ("POST", "/free", post_free),
]

"""`/api/v2/health` and `/api/v2/jobs...`: submit, list, get, cancel, workflow, events (SSE).

A v2 job is a facade prompt whose prompt_id (and client_id) is the job's UUID, so everything
`/prompt` does for a prompt (validation against the fleet's node definitions, carrying uploaded
files to the agent that runs it, the stored history) holds for it too. The fleet job's id is
`job_id_for(tenant, uuid)`: a job is found only inside its caller's tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any, cast

import msgspec
from aiohttp import web

from comfyfleet.coordinator.comfy.admit import admit
from comfyfleet.coordinator.comfy.auth import tenant
from comfyfleet.coordinator.comfy.history import comfy_refs
from comfyfleet.coordinator.comfy.keys import ASSETS, NUMBERS, PORT, STREAMS, UPLOADS
from comfyfleet.coordinator.comfy.port import FleetPort
from comfyfleet.coordinator.comfy.prompts import job_id_for, meta_of, parse_prompt, to_spec
from comfyfleet.coordinator.comfy.v2.errors import V2Error, invalid, read_json
from comfyfleet.coordinator.comfy.v2.shapes import (
    V2,
    JobView,
    job_json,
    list_item,
    parse_job_id,
    parse_output_id,
    v2_status,
)
from comfyfleet.coordinator.comfy.v2.submit import (
    fleet_priority,
    parse_submission,
    resolve_assets,
)
from comfyfleet.coordinator.errors import Conflict
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.store.codec import encode_cursor
from comfyfleet.shared.status import JobStatus

__all__ = ["ROUTES", "base_url", "find_job"]

MAX_LIST = 100
DEFAULT_LIST = 50
LIST_SCAN = 500  # jobs read at most for one list page (the answer says `truncated`)
MAX_STREAMS = 10_000
KEEPALIVE_S = 15.0
MAX_IDEMPOTENCY_KEY = 255
_STATUSES = {
    "queued": [JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.ASSIGNED],
    "running": [JobStatus.RUNNING],
    "canceling": [JobStatus.ASSIGNED, JobStatus.RUNNING],
    "succeeded": [JobStatus.COMPLETED],
    "failed": [JobStatus.FAILED],
    "canceled": [JobStatus.CANCELLED],
    "expired": [],
}


def base_url(request: web.Request) -> str:
    """Where the client reached us (links are absolute, as v2's `url` fields must be)."""
    return f"{request.scheme}://{request.host}"


def not_found(what: str) -> V2Error:
    return V2Error(404, "not_found", f"No job {what[:80]}.")


def find_job(port: FleetPort, who: str, raw_id: str) -> tuple[JobRecord, str]:
    """The caller's job named by a v2 id (any facade prompt with a UUID id), and its id."""
    job_uuid = parse_job_id(raw_id)
    job = port.record(job_id_for(who, job_uuid)) if job_uuid else None
    if job is None or job_uuid is None or job.tenant != who or meta_of(job.spec.metadata) is None:
        raise not_found(raw_id)
    return job, job_uuid


def view(request: web.Request, job: JobRecord) -> JobView:
    port, streams = request.app[PORT], request.app[STREAMS]
    live = port.live(job.id) or job
    return JobView(base_url(request), port.queue_position(live), streams.progress(job.id))


async def unknown(request: web.Request) -> web.Response:
    raise V2Error(404, "not_found", f"No route {request.method} {request.path[:200]}.")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy", "upstream": "comfyfleet"})


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise invalid("Idempotency-Key", f"must be 1-{MAX_IDEMPOTENCY_KEY} characters.")
    return f"comfy-v2:{key}"


async def submit_job(request: web.Request) -> web.Response:
    sub = parse_submission(await read_json(request))
    key = _idempotency_key(request)
    who = tenant(request)
    port, uploads = request.app[PORT], request.app[UPLOADS]
    extra: dict[str, Path] = {}
    resolver = _Resolver(request, who, extra)
    workflow, missing = await asyncio.to_thread(resolve_assets, sub.workflow, resolver)
    if missing:
        raise V2Error(
            422,
            "missing_asset",
            f"Unresolvable core/ASSET reference(s): {', '.join(missing)[:500]}",
            {"missing_ids": missing[:100]},
        )
    job_uuid = str(uuid.uuid4())
    body = {"prompt": workflow, "prompt_id": job_uuid, "client_id": job_uuid}
    req = parse_prompt(body, request.app[NUMBERS].next())
    admitted = await admit(port.fleet(), uploads, who, req.prompt, None, extra)
    if admitted.refused is not None:
        error = admitted.refused.error or {}
        message = str(error.get("message") or "Workflow rejected.")
        raise V2Error(
            422, "invalid_workflow", message, {"node_errors": admitted.refused.node_errors}
        )
    spec = to_spec(req, admitted.workflow, admitted.outputs, admitted.inputs)
    v2 = {"metadata": sub.metadata, "priority": sub.priority}
    spec = msgspec.structs.replace(
        spec, priority=fleet_priority(sub.priority), metadata={**spec.metadata, V2: v2}
    )
    job, created = port.submit(spec, who, job_id_for(who, job_uuid), key)
    if not created:
        raise V2Error(
            422,
            "idempotency_key_reuse",
            "This Idempotency-Key has already been used. Keys are single-use; poll or list "
            "your jobs instead of resubmitting with the same key.",
        )
    return web.json_response(job_json(job, job_uuid, view(request, job)), status=201)


class _Resolver:
    """`core/ASSET` info -> the file name the graph gets, remembering the file to carry."""

    def __init__(self, request: web.Request, who: str, extra: dict[str, Path]) -> None:
        self.port, self.assets = request.app[PORT], request.app[ASSETS]
        self.uploads = request.app[UPLOADS]
        self.who, self.extra = who, extra

    def __call__(self, info: Any) -> str | None:
        ident, digest = info.get("id"), info.get("hash")
        if isinstance(ident, str):
            record = self.assets.get(self.who, ident)
            if record is not None:
                return self._upload(record.upload_value)
            output = parse_output_id(ident)
            if output is not None:
                return self._output(*output)
            return None
        if isinstance(digest, str):
            record = self.assets.by_hash(self.who, digest)
            return self._upload(record.upload_value) if record is not None else None
        return None

    def _upload(self, value: str) -> str | None:
        path = self.uploads.named(self.who, value)
        if path is None:
            return None
        self.extra[value] = path
        return value

    def _output(self, job_uuid: str, index: int) -> str | None:
        job = self.port.record(job_id_for(self.who, job_uuid))
        refs = comfy_refs(job) if job is not None and job.status == JobStatus.COMPLETED else []
        if job is None or job.tenant != self.who or index >= len(refs):
            return None
        _, _, ref, entry = refs[index]
        path = self.port.output_path(job, entry)
        if not path.is_file():
            return None
        value = f"{job_uuid[:8]}_{ref.filename}"
        self.extra[value] = path
        return value


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIST))
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit", "must be an integer.") from None
    if not 1 <= limit <= MAX_LIST:
        raise invalid("limit", f"must be between 1 and {MAX_LIST}.")
    return limit


def _status_filter(request: web.Request) -> set[str] | None:
    raw = request.query.get("status")
    if not raw:
        return None
    wanted = {s.strip() for s in raw.split(",") if s.strip()}
    bad = wanted - set(_STATUSES)
    if bad:
        raise invalid("status", f"has unknown value(s): {', '.join(sorted(bad))[:200]}.")
    return wanted


def _label_filter(request: web.Request) -> dict[str, str]:
    labels = {}
    for key, value in request.query.items():
        if key.startswith("metadata[") and key.endswith("]") and len(key) > 10:
            labels[key[9:-1]] = value
        elif key.startswith("metadata"):
            raise V2Error(
                400, "invalid_metadata_filter", f"filter {key[:80]!r} is not metadata[<key>]"
            )
    if len(labels) > 16:
        raise V2Error(400, "invalid_metadata_filter", "at most 16 metadata filters")
    return labels


def _matches(job: JobRecord, wanted: set[str] | None, labels: dict[str, str]) -> bool:
    meta = job.spec.metadata.get(V2)
    if not isinstance(meta, dict):
        return False
    if wanted is not None and v2_status(job) not in wanted:
        return False
    have = meta.get("metadata")
    return all(isinstance(have, dict) and have.get(k) == v for k, v in labels.items())


async def list_jobs(request: web.Request) -> web.Response:
    """The caller's v2 jobs, newest first; `next_cursor` while more may follow."""
    limit, wanted, labels = _limit(request), _status_filter(request), _label_filter(request)
    cursor = request.query.get("cursor") or None
    who, port = tenant(request), request.app[PORT]
    statuses = None if wanted is None else sorted({s for w in wanted for s in _STATUSES[w]})
    if statuses == []:
        return web.json_response({"jobs": [], "truncated": False})

    def scan() -> tuple[list[tuple[JobRecord, str]], str | None, bool]:
        found: list[tuple[JobRecord, str]] = []
        scanned, next_cursor = 0, cursor
        while next_cursor is not None or scanned == 0:
            page, after = port.page(who, statuses, min(100, LIST_SCAN - scanned), next_cursor)
            for n, job in enumerate(page):
                scanned += 1
                meta = meta_of(job.spec.metadata)
                job_uuid = parse_job_id(meta.prompt_id) if meta else None
                if job_uuid is not None and _matches(job, wanted, labels):
                    found.append((job, job_uuid))
                if len(found) == limit:
                    more = after is not None or n + 1 < len(page)
                    return found, encode_cursor(cast(Any, job)) if more else None, False
            next_cursor = after
            if after is None or not page:
                return found, None, False
            if scanned >= LIST_SCAN:
                return found, after, True
        return found, None, False

    found, next_cursor, truncated = await asyncio.to_thread(scan)
    jobs = [list_item(job, job_uuid, view(request, job)) for job, job_uuid in found]
    body: dict[str, Any] = {"jobs": jobs, "truncated": truncated}
    if next_cursor is not None:
        body["next_cursor"] = next_cursor
    return web.json_response(body)


async def get_job(request: web.Request) -> web.Response:
    job, job_uuid = find_job(request.app[PORT], tenant(request), request.match_info["id"])
    return web.json_response(job_json(job, job_uuid, view(request, job)))


async def get_workflow(request: web.Request) -> web.Response:
    job, _ = find_job(request.app[PORT], tenant(request), request.match_info["id"])
    return web.json_response({"workflow": job.spec.workflow, "format": "api"})


async def cancel_job(request: web.Request) -> web.Response:
    """Idempotent: a waiting job ends canceled at once, a running one is `canceling` until its
    agent stops it; an ended job stays as it ended."""
    port = request.app[PORT]
    job, job_uuid = find_job(port, tenant(request), request.match_info["id"])
    with contextlib.suppress(Conflict):  # it ended meanwhile: the answer says how
        port.cancel(job.id)
    now = port.record(job.id) or job
    return web.json_response(job_json(now, job_uuid, view(request, now)))


async def job_events(request: web.Request) -> web.StreamResponse:
    port, streams = request.app[PORT], request.app[STREAMS]
    job, job_uuid = find_job(port, tenant(request), request.match_info["id"])
    if streams.count >= MAX_STREAMS:
        raise V2Error(
            429,
            "too_many_streams",
            "Maximum concurrent event streams reached; poll GET /api/v2/jobs/{id} instead.",
            headers={"Retry-After": "5"},
        )
    live = port.live(job.id) or job
    sub = streams.subscribe(live, view(request, live))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    loop = asyncio.get_running_loop()
    try:
        await response.prepare(request)
        last = loop.time()
        while True:
            done = sub.done  # the end is queued: after these frames, the stream ends
            frames, due = sub.take()
            if frames:
                await response.write(b"".join(frames))
                last = loop.time()
            if done:
                break
            quiet = KEEPALIVE_S - (loop.time() - last)
            try:
                await asyncio.wait_for(sub.wake.wait(), max(0.0, min(quiet, due or quiet)))
            except TimeoutError:
                if loop.time() - last >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    last = loop.time()
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        streams.unsubscribe(sub)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/v2/health", health),
    ("POST", "/api/v2/jobs", submit_job),
    ("GET", "/api/v2/jobs", list_jobs),
    ("GET", "/api/v2/jobs/{id}", get_job),
    ("GET", "/api/v2/jobs/{id}/workflow", get_workflow),
    ("POST", "/api/v2/jobs/{id}/cancel", cancel_job),
    ("GET", "/api/v2/jobs/{id}/events", job_events),
]

"""Client API (JSON): handlers only parse, call the coordinator, and answer."""

from __future__ import annotations

import re

from aiohttp import web

from comfyfleet.coordinator.api.auth import principal, tenant_filter
from comfyfleet.coordinator.api.body import decode_body, reply
from comfyfleet.coordinator.api.keys import CONFIG, COORDINATOR, ROLE
from comfyfleet.coordinator.api.views import agent_json, job_json
from comfyfleet.coordinator.errors import NotFound
from comfyfleet.coordinator.object_outputs import ObjectOutputs
from comfyfleet.shared import names
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.media import served_as
from comfyfleet.shared.status import JobStatus

routes = web.RouteTableDef()
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
MAX_LIMIT = 500


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _ID.match(value):
        raise InvalidInput(name, f"malformed id {value!r}", "bad_id")
    return value


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    return reply(
        request,
        {
            "ok": True,
            **request.app[ROLE].describe(),
            "jobs_active": len(coord.jobs),
            "queued": len(coord.queued),
            "agents": len(coord.agents),
            "counters": coord.counters,
        },
    )


@routes.post("/v1/jobs")
async def submit(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    spec = await decode_body(request, JobSpec, config.max_body_bytes)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= 256 and key.isprintable()):
        raise InvalidInput("Idempotency-Key", "must be 1 to 256 printable characters")
    coord = request.app[COORDINATOR]
    job, created = coord.submit(spec, key, tenant=principal(request).tenant or "default")
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return reply(
        request,
        job_json(job, coord.progress.get(job.id), coord=coord),
        status=201 if created else 200,
        headers=headers,
    )


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    q = request.query
    statuses = None
    if "status" in q:
        statuses = []
        for s in q["status"].split(","):
            try:
                statuses.append(JobStatus(s.strip().upper()))
            except ValueError:
                allowed = ", ".join(x.value for x in JobStatus)
                raise InvalidInput("status", f"unknown status {s!r}; one of {allowed}") from None
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        raise InvalidInput("limit", "must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput("limit", f"must be between 1 and {MAX_LIMIT}")
    coord = request.app[COORDINATOR]
    found, cursor = coord.list_jobs(statuses, limit, q.get("cursor"), tenant=tenant_filter(request))
    return reply(
        request,
        {
            "jobs": [job_json(j, coord.progress.get(j.id), full=False, coord=coord) for j in found],
            "next_cursor": cursor,
        },
    )


@routes.get("/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    job = coord.get(_id(request, "job_id"))
    return reply(request, job_json(job, coord.progress.get(job.id), coord=coord))


@routes.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    job = coord.cancel(coord.get(_id(request, "job_id")).id)
    status = 200 if job.status == JobStatus.CANCELLED else 202
    return reply(request, job_json(job, coord.progress.get(job.id), coord=coord), status=status)


@routes.get("/v1/jobs/{job_id}/outputs/{name}")
async def get_output(request: web.Request) -> web.StreamResponse:
    coord = request.app[COORDINATOR]
    name = names.check_stored(request.match_info["name"])  # before anything else touches it
    job = coord.get(_id(request, "job_id"))
    entry = next((o for o in job.outputs if o["name"] == name), None)
    if entry is None:
        raise NotFound(f"job {job.id} has no output {name!r}", "name")
    served = served_as(name)  # never the type the agent declared
    # attachment unless image/video; named as ComfyUI named the file
    disposition = names.content_disposition(
        entry.get("original") or names.original_of(name) or name, inline=served.inline
    )
    if isinstance(coord.outputs, ObjectOutputs):  # a short-lived presigned GET, same headers
        url = coord.outputs.download_url(
            job.tenant, job.id, entry["attempt"], name, served.content_type, disposition
        )
        raise web.HTTPTemporaryRedirect(url, headers={"Cache-Control": "no-store"})
    path = coord.outputs.final_path(job.id, entry["attempt"], name)
    return web.FileResponse(
        path,
        headers={
            "Content-Type": served.content_type,
            "X-Content-Type-Options": "nosniff",
            "ETag": f'"{entry["sha256"]}"',
            "Content-Disposition": disposition,
        },
    )


@routes.get("/v1/jobs/{job_id}/preview")
async def get_preview(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    job_id = coord.get(_id(request, "job_id")).id
    live = coord.progress.get(job_id)
    if live is None or live.preview is None:
        raise NotFound(f"job {job_id} has no preview now", "job_id")
    data, mime = live.preview
    return web.Response(body=data, content_type=mime)


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    now = coord.clock()
    tenant = tenant_filter(request)
    return reply(
        request,
        {
            "agents": [
                agent_json(coord, a, now, tenant)
                for a in sorted(coord.agents.values(), key=lambda a: a.agent_id)
            ]
        },
    )


@routes.get("/v1/agents/{agent_id}")
async def get_agent(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    agent = coord.agent(_id(request, "agent_id"))
    return reply(request, agent_json(coord, agent, coord.clock(), tenant_filter(request)))


@routes.post("/v1/agents/{agent_id}/drain")
async def drain_agent(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    agent = coord.drain(_id(request, "agent_id"))
    return reply(
        request, agent_json(coord, agent, coord.clock(), tenant_filter(request)), status=202
    )

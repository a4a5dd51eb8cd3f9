"""Direct uploads to object storage (agent protocol, when `output_store` is a bucket):

- `POST /agent/v1/jobs/{job_id}/outputs/{name}/plan?agent_id&attempt&size`: the parts still to
  PUT, each with a presigned URL (an `UploadPlan`);
- `POST /agent/v1/jobs/{job_id}/outputs/{name}/complete?agent_id&attempt&size&sha256`: finish
  the upload; the coordinator reads the object back and checks size and sha256 (`UploadState`).

Both are fenced like every report; the bucket is called from a worker thread. A bucket that
refuses the coordinator (credentials, no such bucket) fails the job with the reason.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from comfyfleet.coordinator.api.agent_routes import PREFIX, output_target
from comfyfleet.coordinator.api.body import reply
from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.coordinator.errors import Conflict
from comfyfleet.coordinator.object_outputs import ObjectOutputs, OutputStoreRefused
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.shared.errors import InvalidInput

routes = web.RouteTableDef()
_SHA = re.compile(r"^[0-9a-f]{64}$")


def _objects(coord: Coordinator) -> ObjectOutputs:
    if not isinstance(coord.outputs, ObjectOutputs):
        raise Conflict("this coordinator keeps outputs itself: upload them in chunks", "name")
    return coord.outputs


@routes.post(PREFIX + "/jobs/{job_id}/outputs/{name}/plan")
async def plan(request: web.Request) -> web.Response:
    agent_id, job_id, attempt, name, size = output_target(request)
    coord = request.app[COORDINATOR]
    objects = _objects(coord)
    tenant = coord.reports.fenced(agent_id, job_id, attempt).tenant
    try:
        answer = await asyncio.to_thread(objects.plan, tenant, job_id, attempt, name, size)
    except OutputStoreRefused as exc:
        coord.reports.output_store_refused(agent_id, job_id, attempt, exc.message)
        raise
    return reply(request, answer)


@routes.post(PREFIX + "/jobs/{job_id}/outputs/{name}/complete")
async def complete(request: web.Request) -> web.Response:
    agent_id, job_id, attempt, name, size = output_target(request)
    sha256 = request.query.get("sha256", "")
    if not _SHA.match(sha256):
        raise InvalidInput("sha256", "must be 64 lowercase hex digits")
    coord = request.app[COORDINATOR]
    objects = _objects(coord)
    tenant = coord.reports.fenced(agent_id, job_id, attempt).tenant
    try:
        state = await asyncio.to_thread(
            objects.complete, tenant, job_id, attempt, name, size, sha256
        )
    except OutputStoreRefused as exc:
        coord.reports.output_store_refused(agent_id, job_id, attempt, exc.message)
        raise
    coord.reports.fenced(agent_id, job_id, attempt)  # stale meanwhile: the agent hears it
    return reply(request, state)

"""Agent protocol (msgpack; JSON accepted for debugging). Every job message is fenced."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from comfyfleet.coordinator.api.auth import check_agent, principal
from comfyfleet.coordinator.api.body import decode_body, reply
from comfyfleet.coordinator.api.errors import refusal
from comfyfleet.coordinator.api.keys import CONFIG, COORDINATOR
from comfyfleet.coordinator.api.upload import UPLOAD_LOCKS, receive_chunk
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.names import check_stored

routes = web.RouteTableDef()
PREFIX = "/agent/v1"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.Response]]


async def _msg(request: web.Request, type_: type[T]) -> T:
    return await decode_body(request, type_, request.app[CONFIG].max_body_bytes, allow_msgpack=True)


def _protocol_route(type_: type[Any], call: Callable[[Coordinator, Any, bool], Any]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        msg = await _msg(request, type_)
        check_agent(request, msg.agent_id)
        result = call(request.app[COORDINATOR], msg, speaks_for_host(request, msg.agent_id))
        if inspect.isawaitable(result):
            result = await result
        return reply(request, result)

    return handler


def speaks_for_host(request: web.Request, agent_id: str) -> bool:
    """Whether the sender proves it is `agent_id`'s host: its token is bound to that agent id
    (a fleet-wide token proves nothing), or authentication is off (loopback only)."""
    who = principal(request)
    return who.kind != "agent" or who.agent_id == agent_id


def _plain(op: Callable[[Coordinator, Any], Any]) -> Callable[[Coordinator, Any, bool], Any]:
    return lambda coord, msg, _proven: op(coord, msg)


# path -> (message type, coordinator operation): one table instead of six look-alike handlers.
# Register and heartbeat may take jobs from an agent (reconcile.py): they hear whether the
# sender proved it is the agent's host.
PROTOCOL: dict[str, tuple[type[Any], Callable[[Coordinator, Any, bool], Any]]] = {
    "register": (p.Register, lambda c, m, proven: c.register(m, host_proven=proven)),
    "heartbeat": (p.Heartbeat, lambda c, m, proven: c.heartbeat(m, host_proven=proven)),
    "lease": (p.LeaseRequest, _plain(Coordinator.lease)),
    "started": (p.Started, _plain(Coordinator.started)),
    "events": (p.Events, _plain(Coordinator.events)),
    "finish": (p.Finish, _plain(Coordinator.finish)),
}
for _path, (_type, _call) in PROTOCOL.items():
    routes.post(f"{PREFIX}/{_path}")(_protocol_route(_type, _call))


def report_error(exc: Exception) -> p.ReportError | None:
    """A refused report of a batch: the answer it would get alone (api/errors.py)."""
    refused = refusal(exc)
    if refused is None:
        return None
    status, code, message, field = refused
    return p.ReportError(status=status, code=code, message=message, field=field)


@routes.post(PREFIX + "/reports")
async def reports(request: web.Request) -> web.Response:
    """Several started/events/finish reports of one agent; the requests of one event loop turn
    are written in one store transaction (report_batch.ReportWriter)."""
    msg = await _msg(request, p.Reports)
    check_agent(request, msg.agent_id)
    return reply(request, await request.app[COORDINATOR].report_batch(msg, report_error))


def _int(request: web.Request, name: str) -> int:
    raw = request.query.get(name)
    if raw is None:
        raise InvalidInput(name, "query parameter is required", "missing")
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(name, f"must be an integer, not {raw!r}") from None
    if value < 0:
        raise InvalidInput(name, "must not be negative")
    return value


def output_target(request: web.Request) -> tuple[str, str, int, str, int]:
    agent_id = request.query.get("agent_id", "")
    if not _ID.match(agent_id):
        raise InvalidInput("agent_id", "query parameter is required", "missing")
    check_agent(request, agent_id)
    job_id = request.match_info["job_id"]
    if not _ID.match(job_id):
        raise InvalidInput("job_id", f"malformed id {job_id!r}", "bad_id")
    name = check_stored(request.match_info["name"])
    attempt = _int(request, "attempt")
    size = _int(request, "size")
    return agent_id, job_id, attempt, name, size


@routes.put(PREFIX + "/jobs/{job_id}/outputs/{name}")
async def upload_chunk(request: web.Request) -> web.Response:
    """Raw bytes of one chunk: ?agent_id&attempt&offset&size&sha256 (of the whole file)."""
    agent_id, job_id, attempt, name, size = output_target(request)
    offset = _int(request, "offset")
    sha256 = request.query.get("sha256", "")
    if not _SHA.match(sha256):
        raise InvalidInput("sha256", "must be 64 lowercase hex digits")
    config = request.app[CONFIG]
    state = await receive_chunk(
        request.app[COORDINATOR],
        request.app[UPLOAD_LOCKS],
        request.content,
        request.content_length,
        config.max_chunk_bytes,
        agent_id,
        job_id,
        attempt,
        name,
        offset,
        size,
        sha256,
        config.body_read_timeout_s,
    )
    return reply(request, state)


@routes.get(PREFIX + "/jobs/{job_id}/outputs/{name}")
async def upload_state(request: web.Request) -> web.Response:
    """How many bytes of this output the coordinator holds (to resume an upload)."""
    agent_id, job_id, attempt, name, size = output_target(request)
    return reply(
        request, request.app[COORDINATOR].upload_state(agent_id, job_id, attempt, name, size)
    )

"""Followers send what only the leader can answer to the leader (DESIGN.md §8).

The agent protocol, the agents' live state, live progress and event streams live in the leader's
memory. On a coordinator that does not lead now they are answered with 307 and the leader's URL
(`Location`; also `error.leader` in the body), or 503 with Retry-After while no leader is known.
Everything else (submit, job reads, cancel, drain, outputs) any coordinator answers from the store.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from comfyfleet.coordinator.api.errors import Handler, error_response
from comfyfleet.coordinator.api.keys import CONFIG, ROLE

NO_LEADER_RETRY_S = 1


def leader_only(method: str, path: str) -> bool:
    """Whether only the leader can answer this request."""
    if path.startswith("/agent/v1/"):
        return True
    if path in ("/v1/events", "/v1/agents") or path.startswith("/v1/agents/"):
        return method == "GET" or path == "/v1/events"
    return path.startswith("/v1/jobs/") and path.endswith(("/events", "/preview"))


@web.middleware
async def role_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    role = request.app[ROLE]
    if not leader_only(request.method, request.path) or role.leading():
        return await handler(request)
    leader = role.leader_url()
    if leader is None or leader == request.app[CONFIG].url:
        return error_response(
            503,
            "no_leader",
            "no coordinator leads right now (an election is under way); retry shortly",
            headers={"Retry-After": str(NO_LEADER_RETRY_S)},
        )
    body = {
        "error": {
            "code": "not_leader",
            "message": f"this coordinator is a follower; the leader is {leader}",
            "field": None,
            "leader": leader,
        }
    }
    return web.Response(
        status=307,
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers={"Location": leader + request.path_qs},
    )

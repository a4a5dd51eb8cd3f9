"""Authentication by path prefix, and the tenant checks handlers use.

- `/agent/v1/…` needs an agent token;
- `/v1/…` needs an API key (tenant or admin); changing agents (`POST /v1/agents/…`) needs admin;
- `/metrics` needs an admin key;
- everything else (`/`, dashboard assets, `/healthz`) is public.

New routes fall under these rules by their path, with no per-route work. With no keys configured
at all, auth is off and every request acts as the admin of tenant "default" (the coordinator then
refuses to listen beyond loopback, see `exposure_problem`). Credentials are never logged.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from aiohttp import web

from comfyfleet.coordinator.api.errors import Handler, error_response
from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.coordinator.errors import NotFound
from comfyfleet.coordinator.keyring import OPEN, KeyRing, Principal

Rule = Literal["public", "client", "admin", "agent"]
KEYRING = web.AppKey("keyring", KeyRing)
PRINCIPAL = web.RequestKey("principal", Principal)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="comfyfleet"'}


def rule_for(method: str, path: str) -> Rule:
    if path.startswith("/agent/v1/") or path == "/agent/v1":
        return "agent"
    if path == "/metrics" or path.startswith("/metrics/"):
        return "admin"
    if path.startswith("/v1/"):
        if path.startswith("/v1/agents/") and method not in ("GET", "HEAD", "OPTIONS"):
            return "admin"
        return "client"
    return "public"


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def refusal(rule: Rule, principal: Principal) -> str | None:
    """Why this principal may not use a route under this rule, or None."""
    if rule == "agent" and principal.kind != "agent":
        return "an API key cannot call the agent protocol; use an agent token"
    if rule in ("client", "admin") and principal.kind == "agent":
        return "an agent token cannot call the client API; use an API key"
    if rule == "admin" and not principal.admin:
        return "this needs an admin key"
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ring = request.app[KEYRING]
    if not ring.enabled:
        request[PRINCIPAL] = OPEN
        return await handler(request)
    rule = rule_for(request.method, request.path)
    if rule == "public":
        return await handler(request)
    credential = bearer(request.headers.get("Authorization"))
    if credential is None:
        return error_response(
            401,
            "unauthenticated",
            "missing credential: send Authorization: Bearer <key>",
            "Authorization",
            headers=_CHALLENGE,
        )
    principal = ring.verify(credential)
    if principal is None:
        return error_response(
            401, "unauthenticated", "invalid credential", "Authorization", headers=_CHALLENGE
        )
    why = refusal(rule, principal)
    if why is not None:
        return error_response(403, "forbidden", why, "Authorization")
    request[PRINCIPAL] = principal
    if not principal.admin and rule == "client":
        hide_other_tenants_job(request, principal)
    return await handler(request)


def hide_other_tenants_job(request: web.Request, who: Principal) -> None:
    """Any client route naming a `{job_id}` (streams and downloads other modules add too)
    answers 404 for another tenant's job, exactly as for a job that does not exist."""
    job_id = request.match_info.get("job_id")
    if job_id is None:
        return
    try:
        job = request.app[COORDINATOR].get(job_id)
    except NotFound:
        return  # the handler answers for a missing or malformed id
    if not who.sees(job.tenant):
        raise NotFound(f"no job {job_id}", "job_id")


def principal(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, OPEN)


def tenant_filter(request: web.Request) -> str | None:
    """The tenant whose jobs a listing shows; None (all) for an admin."""
    who = principal(request)
    return None if who.admin else who.tenant


def check_agent(request: web.Request, agent_id: str) -> None:
    """A token bound to one agent speaks only for that agent."""
    who = principal(request)
    if who.kind == "agent" and who.agent_id is not None and who.agent_id != agent_id:
        raise web.HTTPForbidden(
            text=f"this token belongs to agent {who.agent_id!r}, not {agent_id!r}"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, ring: KeyRing) -> str | None:
    """Secure by default: no keys means loopback only. The reason to refuse, or None."""
    if ring.enabled or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host}: no API keys or agent tokens are configured "
        f"(keys file {ring.path}), so anyone who can reach it could run jobs. Create keys "
        f"with `comfyfleet keys create --tenant NAME` and "
        f"`comfyfleet keys create --agent --agent-id ID`, or listen on 127.0.0.1"
    )

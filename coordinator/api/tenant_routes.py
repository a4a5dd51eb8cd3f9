"""Tenant settings: webhook subscriptions, the tenant's webhook secret, retention.

`GET /v1/tenants/{tenant}` and `PUT /v1/tenants/{tenant}` (the whole document), for an admin or
the tenant itself. A tenant may set its webhooks and secret; its retention only an admin may
change (a tenant's PUT keeps it). The secret is never shown back, only whether one is set.
"""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from comfyfleet.coordinator.api.auth import principal
from comfyfleet.coordinator.api.body import decode_body, reply
from comfyfleet.coordinator.api.keys import CONFIG, COORDINATOR
from comfyfleet.coordinator.errors import CoordinatorError, NotFound
from comfyfleet.coordinator.tenants import TenantSettings, check_settings
from comfyfleet.shared.errors import InvalidInput

routes = web.RouteTableDef()
_TENANT = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


class Forbidden(CoordinatorError):
    status = 403
    code = "forbidden"


def _tenant(request: web.Request) -> str:
    tenant = request.match_info["tenant"]
    if not _TENANT.match(tenant):
        raise InvalidInput("tenant", f"malformed tenant name {tenant!r}", "bad_id")
    who = principal(request)
    if not who.admin and who.tenant != tenant:
        raise NotFound(f"no tenant {tenant}", "tenant")  # as for another tenant's job
    return tenant


def settings_json(settings: TenantSettings, default_retention_s: float) -> dict[str, object]:
    return {
        "webhooks": msgspec.to_builtins(settings.webhooks),
        "webhook_secret": "set" if settings.webhook_secret is not None else None,
        "retention_s": settings.retention_s,
        "effective_retention_s": (
            settings.retention_s if settings.retention_s is not None else default_retention_s
        ),
    }


@routes.get("/v1/tenants/{tenant}")
async def get_tenant(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    coord = request.app[COORDINATOR]
    return reply(request, settings_json(coord.tenants.get(tenant), coord.config.retention_s))


@routes.put("/v1/tenants/{tenant}")
async def put_tenant(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    config = request.app[CONFIG]
    settings = await decode_body(request, TenantSettings, config.max_body_bytes)
    coord = request.app[COORDINATOR]
    check_settings(settings, config.webhook_allow_private_addresses)
    if not principal(request).admin:
        kept = coord.tenants.get(tenant).retention_s
        if settings.retention_s is not None and settings.retention_s != kept:
            raise Forbidden("only an admin key may change retention_s", "retention_s")
        settings = msgspec.structs.replace(settings, retention_s=kept)
    coord.tenants.save(tenant, settings)
    return reply(request, settings_json(settings, config.retention_s))

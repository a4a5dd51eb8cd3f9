"""Who is calling the facade: the same API keys as `/v1`, in the three ways ComfyUI clients
can send one.

`Authorization: Bearer <key>`; HTTP Basic with the key as the password (many ComfyUI clients
and every browser can do only that, also for the WebSocket); `?token=<key>` (a browser cannot
set headers on a WebSocket). Each key's tenant sees only its own prompts, history, uploads and
files; an admin key acts as its own tenant here (one ComfyUI per tenant). With no keys
configured, everyone is tenant "default". Agent tokens are refused. Credentials are never logged.
Refusals on Comfy API v2's routes take v2's envelope; its health probe needs no key.
"""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from comfyfleet.coordinator.api.auth import KEYRING
from comfyfleet.coordinator.api.errors import Handler
from comfyfleet.coordinator.comfy.v2.errors import is_v2, v2_error
from comfyfleet.coordinator.keyring import OPEN, Principal

__all__ = ["TENANT", "auth_middleware", "credential", "tenant"]

TENANT = web.RequestKey("comfy_tenant", str)
OPEN_PATHS = frozenset({"/api/v2/health"})  # a supervisor probes it without a key (as v2 says)
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="comfyfleet", charset="UTF-8"'}


def credential(authorization: str | None, token: str | None) -> str | None:
    """The key a request carries, or None."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return value
        if scheme.lower() == "basic" and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user, _, password = decoded.partition(":")
            return password or user or None
    return token or None


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    headers = _CHALLENGE if status == 401 else None
    if is_v2(request.path):  # Comfy API v2's envelope
        code = "unauthorized" if status == 401 else "forbidden"
        return v2_error(status, code, message, headers=headers)
    body = {"error": {"type": "unauthorized", "message": message, "details": "", "extra_info": {}}}
    return web.json_response(body, status=status, headers=headers)


def tenant_of(who: Principal) -> str:
    return who.tenant or "default"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ring = request.app[KEYRING]
    if not ring.enabled or request.path in OPEN_PATHS:
        request[TENANT] = tenant_of(OPEN)
        return await handler(request)
    key = credential(request.headers.get("Authorization"), request.query.get("token"))
    if key is None:
        return _refuse(request, 401, "send your API key: Bearer, HTTP Basic password, or ?token=")
    who = ring.verify(key)
    if who is None:
        return _refuse(request, 401, "invalid credential")
    if who.kind == "agent":
        return _refuse(request, 403, "an agent token cannot use the ComfyUI API; use an API key")
    request[TENANT] = tenant_of(who)
    return await handler(request)


def tenant(request: web.Request) -> str:
    return request[TENANT]

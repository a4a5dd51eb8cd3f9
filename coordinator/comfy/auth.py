"""Who is calling the facade: the same API keys as `/v1`, in the three ways ComfyUI clients
can send one.

`Authorization: Bearer <key>`; HTTP Basic with the key as the password (many ComfyUI clients
and every browser can do only that, also for the WebSocket); `?token=<key>` (a browser cannot
set headers on a WebSocket). Each key's tenant sees only its own prompts, history, uploads and
files; an admin key acts as its own tenant here (one ComfyUI per tenant). With no keys
configured, everyone is tenant "default". Agent tokens are refused. Credentials are never logged.
"""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from comfyfleet.coordinator.api.auth import KEYRING
from comfyfleet.coordinator.api.errors import Handler
from comfyfleet.coordinator.keyring import OPEN, Principal

__all__ = ["TENANT", "auth_middleware", "credential", "tenant"]

TENANT = web.RequestKey("comfy_tenant", str)
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


def _refuse(status: int, message: str) -> web.Response:
    body = {"error": {"type": "unauthorized", "message": message, "details": "", "extra_info": {}}}
    return web.json_response(body, status=status, headers=_CHALLENGE if status == 401 else None)


def tenant_of(who: Principal) -> str:
    return who.tenant or "default"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ring = request.app[KEYRING]
    if not ring.enabled:
        request[TENANT] = tenant_of(OPEN)
        return await handler(request)
    key = credential(request.headers.get("Authorization"), request.query.get("token"))
    if key is None:
        return _refuse(401, "send your API key: Bearer, HTTP Basic password, or ?token=")
    who = ring.verify(key)
    if who is None:
        return _refuse(401, "invalid credential")
    if who.kind == "agent":
        return _refuse(403, "an agent token cannot use the ComfyUI API; use an API key")
    request[TENANT] = tenant_of(who)
    return await handler(request)


def tenant(request: web.Request) -> str:
    return request[TENANT]

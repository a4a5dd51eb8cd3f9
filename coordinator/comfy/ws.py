"""`GET /ws?clientId=C`: ComfyUI's WebSocket, one per client, fed by the hub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

from aiohttp import WSMsgType, web

from comfyfleet.coordinator.comfy.auth import tenant
from comfyfleet.coordinator.comfy.hub import Socket
from comfyfleet.coordinator.comfy.keys import HUB

__all__ = ["ROUTES"]

MAX_CLIENT_ID = 256
MAX_FRAME = 1 << 20  # what a client may send us (feature flags are a few bytes)


async def websocket(request: web.Request) -> web.StreamResponse:
    sid = request.query.get("clientId", "")[:MAX_CLIENT_ID] or uuid.uuid4().hex
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=None)
    await ws.prepare(request)
    hub = request.app[HUB]
    sock = Socket(tenant(request), sid, ws, request.transport)
    writer = asyncio.create_task(sock.writer(), name=f"comfy-ws-{sid}")
    hub.connect(sock)
    first = True
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                continue
            if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                hub.feature_flags(sock, data.get("data"))
            first = False
    finally:
        hub.disconnect(sock)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
    return ws


ROUTES = [("GET", "/ws", websocket)]

"""WebSocket frames (binary layouts of COMFYUI.md) and the hub that routes them to clients.

Routing follows ComfyUI's `send_sync(event, data, sid)`: `sid=None` broadcasts to every socket,
otherwise only the socket registered for that clientId gets the frame. One publisher task sends
everything in the order it was queued, as ComfyUI's single publisher loop does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

__all__ = [
    "BINARY_PREVIEW",
    "BINARY_PREVIEW_META",
    "BINARY_TEXT",
    "Hub",
    "decode_binary",
    "encode_preview",
    "encode_preview_meta",
    "encode_text",
]

log = structlog.get_logger(__name__)

BINARY_PREVIEW = 1
BINARY_TEXT = 3
BINARY_PREVIEW_META = 4
_IMAGE_FORMATS = {"JPEG": 1, "PNG": 2}
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}


def encode_preview(fmt: str, image: bytes) -> bytes:
    """Type 1: `[1][format 1=JPEG, 2=PNG][image bytes]`."""
    return struct.pack(">II", BINARY_PREVIEW, _IMAGE_FORMATS[fmt]) + image


def encode_preview_meta(fmt: str, image: bytes, meta: dict[str, Any]) -> bytes:
    """Type 4: `[4][meta length][meta JSON][image bytes]`; meta gains `image_type`."""
    body = json.dumps({**meta, "image_type": _MIME[fmt]}).encode()
    return struct.pack(">II", BINARY_PREVIEW_META, len(body)) + body + image


def encode_text(node_id: str, text: str) -> bytes:
    """Type 3: `[3][node id length][node id][text]`."""
    nid = node_id.encode()
    return struct.pack(">II", BINARY_TEXT, len(nid)) + nid + text.encode()


def decode_binary(payload: bytes) -> dict[str, Any]:
    """A binary frame described the way the recordings describe them."""
    (event,) = struct.unpack(">I", payload[:4])
    out: dict[str, Any] = {"binary_event": event, "total_len": len(payload)}
    if event == BINARY_PREVIEW:
        (image_type,) = struct.unpack(">I", payload[4:8])
        image = payload[8:]
        out.update(image_type=image_type, image_magic=image[:8].hex(), image_len=len(image))
    elif event == BINARY_PREVIEW_META:
        (meta_len,) = struct.unpack(">I", payload[4:8])
        meta = json.loads(payload[8 : 8 + meta_len])
        image = payload[8 + meta_len :]
        out.update(
            metadata_len=meta_len,
            metadata=meta,
            image_magic=image[:8].hex(),
            image_len=len(image),
        )
    elif event == BINARY_TEXT:
        (nid_len,) = struct.unpack(">I", payload[4:8])
        out.update(
            node_id=payload[8 : 8 + nid_len].decode(),
            text=payload[8 + nid_len :].decode(errors="replace"),
        )
    return out


class Hub:
    """Connected sockets by clientId, their feature flags, and the ordered outbox."""

    def __init__(self) -> None:
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._flags: dict[str, dict[str, Any]] = {}
        self._outbox: asyncio.Queue[tuple[str | None, str | bytes]] = asyncio.Queue()
        self.dropped = 0
        self.mute: Callable[[], bool] = lambda: False  # the ws_silent fault: frames go nowhere

    @property
    def client_count(self) -> int:
        return len(self._sockets)

    def attach(self, sid: str, ws: web.WebSocketResponse) -> None:
        self._sockets[sid] = ws  # a reconnect with the same clientId replaces the old socket
        self._flags.pop(sid, None)

    def detach(self, sid: str, ws: web.WebSocketResponse) -> None:
        if self._sockets.get(sid) is ws:
            del self._sockets[sid]
            self._flags.pop(sid, None)

    def set_flags(self, sid: str, flags: dict[str, Any]) -> None:
        self._flags[sid] = flags

    def supports_preview_metadata(self, sid: str | None) -> bool:
        if sid is None:
            return False
        return bool(self._flags.get(sid, {}).get("supports_preview_metadata"))

    def send_json(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        self._outbox.put_nowait((sid, json.dumps({"type": event, "data": data})))

    def send_bytes(self, payload: bytes, sid: str | None = None) -> None:
        self._outbox.put_nowait((sid, payload))

    async def send_now(self, event: str, data: dict[str, Any], ws: web.WebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": event, "data": data}))

    async def drain(self) -> None:
        """Wait until everything queued so far has been handed to the sockets."""
        await self._outbox.join()

    async def close_client(self, sid: str) -> bool:
        ws = self._sockets.pop(sid, None)
        self._flags.pop(sid, None)
        if ws is None:
            return False
        self.dropped += 1
        await ws.close(code=1011, message=b"simulated drop")
        return True

    async def close_all(self) -> None:
        for sid in list(self._sockets):
            ws = self._sockets.pop(sid)
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutdown")

    async def publish(self) -> None:
        """Run forever: hand queued frames to their sockets, in order."""
        while True:
            sid, frame = await self._outbox.get()
            try:
                targets = (
                    []
                    if self.mute()
                    else list(self._sockets.values())
                    if sid is None
                    else [ws for ws in [self._sockets.get(sid)] if ws is not None]
                )
                for ws in targets:
                    if ws.closed:
                        continue
                    try:
                        if isinstance(frame, bytes):
                            await ws.send_bytes(frame)
                        else:
                            await ws.send_str(frame)
                    except (ConnectionError, RuntimeError) as exc:
                        log.debug("sim.ws_send_failed", sid=sid, error=str(exc))
            finally:
                self._outbox.task_done()

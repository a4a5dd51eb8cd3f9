"""One run's WebSocket to ComfyUI: opened before the prompt is submitted (announcing preview
metadata, so previews carry their prompt_id), its frames relayed to the run's loop, and reopened
with the same clientId in the background when it drops.

The loop reads ``(kind, payload)`` items from ``FrameRelay.items``: ``TEXT`` (a decoded JSON
frame), ``BINARY`` (the frame's bytes), ``WS_DOWN``, and ``WS_UP`` with what /queue said right
after the reconnect (None if it did not answer): the id-less ``executing`` frame that follows a
reconnect belongs to our prompt only if it is the one running. ``CANCEL`` is the run's own item.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import structlog

from comfyfleet.agent.comfyui.client import (
    ComfyUIClient,
    ComfyUIUnavailable,
    QueueState,
    parse_queue,
    within,
)
from comfyfleet.agent.comfyui.sockets import CLOSED

__all__ = ["BINARY", "CANCEL", "FEATURE_FLAGS", "TEXT", "WS_DOWN", "WS_UP", "FrameRelay", "Item"]

FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}

TEXT, BINARY, WS_DOWN, WS_UP, CANCEL = "text", "binary", "ws_down", "ws_up", "cancel"
Item = tuple[str, Any]


class FrameRelay:
    """The socket of one clientId for one run; ``ws`` is None while it is down."""

    def __init__(
        self,
        client: ComfyUIClient,
        url: str,
        http_timeout_s: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.client = client
        self.url = url
        self.http_timeout_s = http_timeout_s
        self.log = log
        self.items: asyncio.Queue[Item] = asyncio.Queue()
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        """Open the socket once and announce our features; ComfyUIUnavailable if it fails."""
        try:
            async with asyncio.timeout(self.http_timeout_s):
                ws = await self.client.session.ws_connect(
                    self.url, heartbeat=30.0, max_msg_size=64 * 1024 * 1024
                )
                await ws.send_str(json.dumps(FEATURE_FLAGS))
                return ws
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ComfyUIUnavailable(f"WebSocket {self.url}: {type(exc).__name__}: {exc}") from exc

    async def connect_with_grace(
        self, grace_s: float, deadline: float
    ) -> aiohttp.ClientWebSocketResponse:
        """Retry `connect` with backoff for `grace_s` (and not past the loop-time `deadline`);
        then the last ComfyUIUnavailable is raised."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        delay = 0.05
        while True:
            try:
                return await self.connect()
            except ComfyUIUnavailable as exc:
                if loop.time() - start >= grace_s or loop.time() >= deadline:
                    raise
                self.log.info("comfyui.ws_connect_retry", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def relay(self) -> None:
        """Relay WebSocket frames to `items`; reconnect (same clientId) when dropped."""
        delay = 0.05
        while True:
            ws = self.ws
            if ws is None:
                try:
                    ws = await self.connect()
                except ComfyUIUnavailable:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                self.ws = ws
                # Before relaying frames (they wait in the socket): is our prompt the one running?
                self.items.put_nowait((WS_UP, await self._queue_state()))
            try:
                msg = await ws.receive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken socket is a dropped socket
                self.log.info("comfyui.ws_receive_failed", error=repr(exc))
                msg = None
            if msg is not None and msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                self.items.put_nowait((TEXT, frame))
            elif msg is not None and msg.type == aiohttp.WSMsgType.BINARY:
                self.items.put_nowait((BINARY, msg.data))
            elif msg is None or msg.type in CLOSED:
                self.ws = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)
                self.items.put_nowait((WS_DOWN, None))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _queue_state(self) -> QueueState | None:
        try:
            return parse_queue(await within(self.http_timeout_s, self.client.queue_raw()))
        except ComfyUIUnavailable:
            return None

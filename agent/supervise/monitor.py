"""A listening WebSocket per managed ComfyUI, to notice a socket that went silent (#15240).

ComfyUI broadcasts `status` to every socket on enqueue, dequeue and at the end of each prompt
(../shared/COMFYUI.md). A socket that stayed connected through a whole prompt and heard nothing
at all while /history says the prompt is done is the "WebSocket silent after long uptime"
failure: the jobs still finish (the driver falls back to /history), but slowly and blind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import structlog

from comfyfleet.agent.comfyui.client import ws_url

log = structlog.get_logger("agent.instances")


class SocketWatch:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, client_id: str) -> None:
        self.session = session
        self.url = ws_url(base_url, client_id)
        self.connected_since: float | None = None  # wall-clock; None while not connected
        self.last_frame_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()  # try to connect now, not after the backoff
        self._connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"ws-watch {self.url}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None
        self.connected_since = None

    async def connect_now(self, timeout_s: float) -> bool:
        """Connect at once (ComfyUI just came up); True once connected within `timeout_s`."""
        self._poke.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    def silent_through(self, start: float, end: float) -> bool:
        """Connected during all of [start, end] and not one frame heard in it."""
        if self.connected_since is None or self.connected_since > start:
            return False
        return self.last_frame_at is None or self.last_frame_at < start

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                async with self.session.ws_connect(
                    self.url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)
                ) as ws:
                    self.connected_since = time.time()
                    self._connected.set()
                    delay = 0.2
                    async for msg in ws:
                        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            self.last_frame_at = time.time()
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("ws_watch_failed", url=self.url, error=str(exc))
            self.connected_since = None
            self._connected.clear()
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._poke.wait()
            delay = min(delay * 2, 2.0)

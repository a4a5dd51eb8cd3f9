"""WebSockets kept open between prompts: one per ComfyUI clientId (one per pipeline slot).

A run takes the socket its clientId last used instead of opening a new one (saves the HTTP
upgrade on the path lease -> prompt -> started) and gives it back when it ends with the socket
still up. While parked, a socket is drained: frames there belong to earlier prompts or are
broadcasts (`status`), never to the next prompt, which is submitted only after `take`; so
nothing piles up in an idle slot, and a socket ComfyUI closes meanwhile is dropped from the
pool. One that dies unnoticed is handled by the next run's reader, which reconnects with the
same clientId as after any drop.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

CLOSED = (  # frame types that mean the socket is gone
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


class SocketPool:
    def __init__(self) -> None:
        self.parked: dict[str, tuple[aiohttp.ClientWebSocketResponse, asyncio.Task[None]]] = {}

    async def take(self, url: str) -> aiohttp.ClientWebSocketResponse | None:
        entry = self.parked.pop(url, None)
        if entry is None:
            return None
        ws, drain = entry
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        if ws.closed or ws.exception() is not None:
            return None
        return ws

    async def give(self, url: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Park `ws` for the next run of its clientId (closing one parked there before)."""
        old = await self.take(url)
        if old is not None and old is not ws:
            await _close(old)
        if not ws.closed:
            self.parked[url] = (
                ws,
                asyncio.create_task(self._drain(url, ws), name="socketpool-drain"),
            )

    async def _drain(self, url: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type in CLOSED:
                if url in self.parked and self.parked[url][0] is ws:
                    del self.parked[url]
                await _close(ws)
                return

    async def close(self) -> None:
        for url in list(self.parked):
            ws = await self.take(url)
            if ws is not None:
                await _close(ws)


async def _close(ws: aiohttp.ClientWebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 2.0)

"""A small WebSocket reader for tests that drive the simulator (or a real ComfyUI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp

from comfyfleet.sim.recording import frame_record

__all__ = ["SimSocket", "is_done"]

Frame = dict[str, Any]


def is_done(prompt_id: str) -> Callable[[Frame], bool]:
    """True for the `executing{node: null}` that ends `prompt_id`."""

    def check(frame: Frame) -> bool:
        msg = frame["msg"]
        return (
            frame["kind"] == "text"
            and msg.get("type") == "executing"
            and msg["data"].get("node") is None
            and msg["data"].get("prompt_id") == prompt_id
        )

    return check


class SimSocket:
    """Keeps every frame received, in the recordings' record format."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self._t0 = time.monotonic()

    @classmethod
    async def connect(cls, session: Any, client_id: str | None, path: str = "/ws") -> SimSocket:
        url = path if client_id is None else f"{path}?clientId={client_id}"
        return cls(await session.ws_connect(url))

    async def read(self, wait_s: float = 10.0) -> Frame | None:
        """The next frame, or None when the socket closed."""
        msg = await self.ws.receive(timeout=wait_s)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            frame = frame_record(msg.data, round(time.monotonic() - self._t0, 4))
            self.frames.append(frame)
            return frame
        return None

    async def read_until(self, predicate: Callable[[Frame], bool], wait_s: float = 10.0) -> Frame:
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching frame")
            frame = await self.read(left)
            if frame is None:
                raise ConnectionError("socket closed before the frame arrived")
            if predicate(frame):
                return frame

    async def wait_done(self, prompt_id: str, wait_s: float = 10.0) -> list[Frame]:
        """Read until the prompt's executing{null}; returns the frames read by this call."""
        start = len(self.frames)
        await self.read_until(is_done(prompt_id), wait_s)
        return self.frames[start:]

    async def wait_executing(self, node_id: str, wait_s: float = 10.0) -> Frame:
        def check(frame: Frame) -> bool:
            msg = frame["msg"]
            return (
                frame["kind"] == "text"
                and msg.get("type") == "executing"
                and msg["data"].get("node") == node_id
            )

        return await self.read_until(check, wait_s)

    async def silent_for(self, seconds: float) -> bool:
        """True when nothing arrives for `seconds`."""
        try:
            frame = await self.read(seconds)
        except TimeoutError:
            return True
        return frame is None

    async def close(self) -> None:
        await self.ws.close()

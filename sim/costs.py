"""What each request costs a real ComfyUI in CPU, spent by the simulator too (its event loop busy,
as ComfyUI's handlers run on its one loop), so that a driver that asks too much shows it here.

Measured with `bench.comfy_costs` on ComfyUI 0.3.64 in CPU mode (2 cores; the ComfyUI process's
CPU time over 200 requests one after another, less its idle CPU; bench/notes.md): /system_stats
1.5 ms (2.5 ms in the issue's measurement), /history/{id} 0.15 ms, /queue 0.1 ms, /view 0.35 ms,
/object_info 38 ms, GET /prompt 0.05 ms, /features 0.1 ms. SaveImage lists the output folder on
every save (the simulator does the same, sim/naming.py), so its cost grows with the folder: ComfyUI
spent 15.6 ms per prompt with an empty folder and 19.8 ms with 5,000 more files.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

# route (without the /api prefix) -> CPU milliseconds per request
COMFYUI_CPU_MS: Mapping[str, float] = {
    "/system_stats": 1.5,
    "/history/{id}": 0.15,
    "/queue": 0.1,
    "/view": 0.35,
    "/object_info": 38.0,
    "/prompt": 0.05,
    "/features": 0.1,
}


def route_key(path: str) -> str:
    """The cost table's key for a request path."""
    if path.startswith("/api/"):
        path = path[4:]
    if path.startswith("/history/"):
        return "/history/{id}"
    return path


def burn(ms: float) -> None:
    """Keep this thread (the event loop) busy for `ms` of CPU."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


def cost_middleware(costs: Mapping[str, float]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def spend(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        ms = costs.get(route_key(request.path)) if request.method == "GET" else None
        if ms:
            burn(ms)
        return await handler(request)

    return spend

"""What each request costs a real ComfyUI in CPU, spent by the simulator too (its event loop busy,
as ComfyUI's handlers run on its one loop), so that a driver that asks too much shows it here.

Measured with `bench.comfy_costs` on ComfyUI 0.3.64 in CPU mode (2 cores; the ComfyUI process's
CPU time over 200 requests one after another, less its idle CPU; bench/notes.md): /system_stats
1.5 ms (2.5 ms in the issue's measurement), /history/{id} 0.15 ms, /queue 0.1 ms, /view 0.35 ms,
/object_info 38 ms, GET /prompt 0.05 ms, /features 0.1 ms. Measured the same way (issue 18,
agentcpu): a WebSocket connect (the upgrade and the `status` frame it is sent) 0.3 ms; POST /prompt
of bench.real_comfy's three-node prompt 0.25 ms on ComfyUI's event-loop thread (that thread's CPU,
psutil per thread, over 100 POSTs with nothing connected). SaveImage lists the output folder on
every save (the simulator does the same, sim/naming.py), so its cost grows with the folder: ComfyUI
spent 15.6 ms per prompt with an empty folder and 19.8 ms with 5,000 more files. Running the prompt
itself costs a CPU-mode ComfyUI ~8 ms in its worker threads: `--node-cpu` (sim/config.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

# "METHOD route" (the route without the /api prefix) -> CPU milliseconds per request
COMFYUI_CPU_MS: Mapping[str, float] = {
    "GET /system_stats": 1.5,
    "GET /history/{id}": 0.15,
    "GET /queue": 0.1,
    "GET /view": 0.35,
    "GET /object_info": 38.0,
    "GET /prompt": 0.05,
    "POST /prompt": 0.25,
    "GET /features": 0.1,
    "GET /ws": 0.3,
}


def route_key(path: str, method: str = "GET") -> str:
    """The cost table's key for a request."""
    if path.startswith("/api/"):
        path = path[4:]
    if path.startswith("/history/"):
        path = "/history/{id}"
    return f"{method} {path}"


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
        ms = costs.get(route_key(request.path, request.method))
        if ms:
            burn(ms)
        return await handler(request)

    return spend

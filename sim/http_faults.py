"""HTTP-level fault knobs of the simulator: a ComfyUI that answers garbage or hangs on /prompt."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from comfyfleet.sim.state import SIM_STATE

log = structlog.get_logger(__name__)

GARBAGE = b'<html>\x00\xff\xfe not json {"status": [unterminated'
_PROMPT = ("/prompt", "/api/prompt")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def faulty_http_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`garbage`: every ComfyUI route answers 200 with a body no JSON parser takes.
    `hang_prompt`: POST /prompt is held unanswered while the knob is set. `/sim/` is exempt."""
    if request.path.startswith(("/sim/", "/api/sim/")):
        return await handler(request)
    faults = request.app[SIM_STATE].faults
    if faults.garbage:
        return web.Response(status=200, body=GARBAGE, content_type="application/json")
    if faults.hang_prompt and request.method == "POST" and request.path in _PROMPT:
        log.warning("sim.hang_prompt")
        # the knob is a plain flag flipped by POST /sim/faults; a 50 ms poll is all a fault needs
        while faults.hang_prompt:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return await handler(request)

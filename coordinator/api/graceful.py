"""Graceful stop: on SIGTERM stop accepting connections, let requests in flight finish
(their bodies may still be arriving), then shut down.

aiohttp's own shutdown stops reading from open connections at once, so a submission whose body
is still on the wire would be cut off; hence this count of requests in flight. Long polls
(`POST /agent/v1/lease`) and event streams (`GET …/events`) are not waited for: they hold no
commit and their clients reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiohttp import web

from comfyfleet.coordinator.api.errors import Handler

log = structlog.get_logger("coordinator")


class InFlight:
    """How many requests that must finish before a stop are running now."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()

    async def wait_idle(self, grace_s: float) -> bool:
        try:
            await asyncio.wait_for(self.idle.wait(), grace_s)
            return True
        except TimeoutError:
            return False


INFLIGHT = web.AppKey("inflight", InFlight)


def waits_for(method: str, path: str) -> bool:
    """Whether a stop waits for this request (long polls and streams are not waited for)."""
    if method == "POST" and path == "/agent/v1/lease":
        return False
    return not (method == "GET" and path.endswith("/events"))


@web.middleware
async def inflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not waits_for(request.method, request.path):
        return await handler(request)
    inflight = request.app[INFLIGHT]
    inflight.enter()
    try:
        return await handler(request)
    finally:
        inflight.leave()


async def stop(
    runner: web.AppRunner, sites: Sequence[web.BaseSite], inflight: InFlight, grace_s: float
) -> None:
    for site in sites:
        await site.stop()  # no new connections; open ones keep being served
    if inflight.count:
        log.info("coordinator_finishing_requests", in_flight=inflight.count)
        if not await inflight.wait_idle(grace_s):
            log.warning("coordinator_stop_grace_over", in_flight=inflight.count)
    await runner.cleanup()

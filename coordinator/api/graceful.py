"""Graceful stop: on SIGTERM stop accepting connections, let requests in flight finish
(their bodies may still be arriving), then shut down.

aiohttp's own shutdown stops reading from open connections at once, so a submission whose body
is still on the wire would be cut off; hence this count of requests in flight. Long polls
(`POST /agent/v1/lease`) and event streams (`GET …/events`) are not waited for: they hold no
commit and their clients reconnect. A long poll is answered at once when the stop begins (503,
`Retry-After`): left waiting, it would hold the stop until its wait ran out or aiohttp's
shutdown timeout cut it, 7-10 s for an idle coordinator with agents. Event streams end when
the bus closes them (on shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from aiohttp import web

from comfyfleet.coordinator.api.errors import Handler, error_response

log = structlog.get_logger("coordinator")


class InFlight:
    """How many requests that must finish before a stop are running now."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = asyncio.Event()  # set when a stop begins: long polls answer at once

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


def is_long_poll(method: str, path: str) -> bool:
    return method == "POST" and path == "/agent/v1/lease"


def waits_for(method: str, path: str) -> bool:
    """Whether a stop waits for this request (long polls and streams are not waited for)."""
    if is_long_poll(method, path):
        return False
    return not (method == "GET" and path.endswith("/events"))


async def until_stopping(
    request: web.Request, handler: Handler, stopping: asyncio.Event
) -> web.StreamResponse:
    """The handler's answer, or a 503 the moment a stop begins (the handler is cancelled; a
    lease holds nothing while it waits, so nothing is lost)."""
    answer = asyncio.ensure_future(handler(request))
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait([answer, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not answer.done():
            answer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answer
    if not answer.cancelled():
        return answer.result()
    return error_response(
        503,
        "stopping",
        "the coordinator is stopping; try again",
        headers={"Retry-After": "1", "Connection": "close"},
    )


@web.middleware
async def inflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_long_poll(request.method, request.path):
        return await until_stopping(request, handler, request.app[INFLIGHT].stopping)
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
    inflight.stopping.set()  # long polls answer now
    if inflight.count:
        log.info("coordinator_finishing_requests", in_flight=inflight.count)
        if not await inflight.wait_idle(grace_s):
            log.warning("coordinator_stop_grace_over", in_flight=inflight.count)
    await runner.cleanup()

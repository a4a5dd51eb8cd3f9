"""Request log: one `http_request` line per request with method, path, status and latency."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from comfyfleet.coordinator.api.errors import Handler

log = structlog.get_logger("coordinator.http")
QUIET_PREFIXES = ("/agent/v1/", "/healthz", "/metrics", "/static/")


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        latency_ms = round((time.perf_counter() - start) * 1000, 2)
        # agent protocol traffic and scrapes are frequent: debug; people's requests: info
        level = log.debug if request.path.startswith(QUIET_PREFIXES) else log.info
        level(
            "http_request",
            method=request.method,
            path=request.path,
            status=status,
            latency_ms=latency_ms,
            remote=request.remote,
        )

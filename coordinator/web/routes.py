"""Serving the dashboard (`/`, `/static/...`) and the Prometheus scrape (`/metrics`)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.coordinator.metrics import CONTENT_TYPE

STATIC = Path(__file__).parent / "static"
routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[COORDINATOR].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


routes.static("/static", STATIC, append_version=False)

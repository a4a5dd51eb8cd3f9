"""Serving the dashboard (`/`, `/static/...`) and the Prometheus scrape (`/metrics`)."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.coordinator.errors import NotFound
from comfyfleet.coordinator.metrics import CONTENT_TYPE

STATIC = Path(__file__).parent / "static"
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\.[a-z]{1,8}$")
routes = web.RouteTableDef()
# The dashboard runs only its own script and style from this origin: no inline script or style
# (app.js sets styles through the CSSOM), images from the API or blob: URLs made of its bytes,
# no frames, plugins or form posts. An output rendered here cannot run script.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "index.html",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP, **NOSNIFF},
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[COORDINATOR].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/static/{filename}")
async def asset(request: web.Request) -> web.FileResponse:
    """A dashboard asset; anything else is a 404 in the API's error format (a plain static
    route answers a missing file with an empty 404)."""
    name = request.match_info["filename"]
    if not _ASSET.match(name) or not (STATIC / name).is_file():
        raise NotFound(f"no dashboard asset {name!r}", "filename")
    return web.FileResponse(STATIC / name, headers=NOSNIFF)

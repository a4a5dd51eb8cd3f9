"""The ComfyUI facade as an aiohttp application on its own listener (`comfy_listen`).

Every route is served at the root and again under `/api/`, as ComfyUI does. The app shares the
coordinator object of the main app (same process, same event loop): it submits and reads jobs
through `FleetPort` and follows them through the coordinator's feed (`Hub`).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable

import structlog
from aiohttp import web

from comfyfleet.coordinator.api.auth import KEYRING
from comfyfleet.coordinator.api.errors import Handler
from comfyfleet.coordinator.comfy import (
    routes_files,
    routes_info,
    routes_jobs_api,
    routes_prompt,
    routes_ui,
    ws,
)
from comfyfleet.coordinator.comfy.auth import auth_middleware
from comfyfleet.coordinator.comfy.deleted import DeletedHistory
from comfyfleet.coordinator.comfy.errors import errors_middleware
from comfyfleet.coordinator.comfy.files import UploadStore
from comfyfleet.coordinator.comfy.frontend import frontend
from comfyfleet.coordinator.comfy.hub import Hub
from comfyfleet.coordinator.comfy.keys import (
    ASSETS,
    COMFY_CONFIG,
    DELETED,
    FRONTEND,
    HUB,
    NUMBERS,
    PORT,
    STREAMS,
    UPLOADS,
    USERDATA,
    Numbers,
)
from comfyfleet.coordinator.comfy.port import FleetPort
from comfyfleet.coordinator.comfy.userdata import UserData
from comfyfleet.coordinator.comfy.v2 import routes_assets, routes_jobs
from comfyfleet.coordinator.comfy.v2.assets import AssetIndex
from comfyfleet.coordinator.comfy.v2.streams import JobStreams
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.keyring import KeyRing
from comfyfleet.coordinator.service import Coordinator

__all__ = ["create_comfy_app", "start_comfy_site"]

log = structlog.get_logger("coordinator.comfy")

RouteSpec = tuple[str, str, Handler]


def _routes() -> Iterable[RouteSpec]:
    listed = (routes_prompt, routes_files, routes_info, routes_ui, ws)
    for spec in (route for module in listed for route in module.ROUTES):
        yield spec
        method, path, handler = spec
        yield method, f"/api{path}", handler
    yield from routes_jobs_api.ROUTES  # ComfyUI's Jobs API: under /api only, as ComfyUI has it
    yield from routes_jobs.ROUTES  # Comfy API v2: under /api/v2 only
    yield from routes_assets.ROUTES


def create_comfy_app(
    config: CoordinatorConfig, coordinator: Coordinator, keyring: KeyRing
) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        client_max_size=max(config.max_body_bytes, config.comfy_max_upload_bytes + (1 << 20)),
        handler_args={
            "max_line_size": config.max_header_bytes,
            "max_field_size": config.max_header_bytes,
            "max_headers": config.max_headers,
        },
    )
    app[COMFY_CONFIG] = config
    app[KEYRING] = keyring
    port = FleetPort(coordinator)
    hub = Hub()
    streams = JobStreams()
    app[PORT] = port
    app[HUB] = hub
    app[STREAMS] = streams
    app[UPLOADS] = UploadStore(config.comfy_dir / "uploads")
    app[DELETED] = DeletedHistory(config.comfy_dir / "history-deleted.jsonl")
    app[NUMBERS] = Numbers()
    app[ASSETS] = AssetIndex(config.comfy_dir / "v2-assets.sqlite3")
    app[USERDATA] = UserData(config.comfy_dir / "userdata")
    app[FRONTEND] = ui = frontend()
    for method, path, handler in _routes():
        app.router.add_route(method, path, handler)
    app.router.add_route("GET", "/", routes_ui.index)
    app.router.add_route("*", "/api/v2/{tail:.*}", routes_jobs.unknown)  # v2's 404, not a file
    if ui.root is not None:  # the web UI's files, behind every route (as ComfyUI serves them)
        app.router.add_static("/", ui.root)

    async def follow(app: web.Application) -> AsyncIterator[None]:
        port.watch(hub)
        port.watch(streams)
        yield
        port.unwatch(streams)
        port.unwatch(hub)
        hub.close_all()
        streams.close_all()
        app[ASSETS].close()

    async def close_sockets(app: web.Application) -> None:
        hub.close_all()
        streams.close_all()

    app.cleanup_ctx.append(follow)
    app.on_shutdown.append(close_sockets)
    return app


def listen_address(value: str) -> tuple[str, int]:
    """HOST:PORT of `comfy_listen` (checked when the config was read)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def start_comfy_site(
    config: CoordinatorConfig,
    coordinator: Coordinator,
    keyring: KeyRing,
    ssl_context: ssl.SSLContext | None,
) -> web.AppRunner:
    """Serve the facade on `config.comfy_listen`; the caller cleans the runner up."""
    assert config.comfy_listen
    host, port = listen_address(config.comfy_listen)
    runner = web.AppRunner(create_comfy_app(config, coordinator, keyring), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    log.info("comfy_listening", url=f"{scheme}://{host}:{port}")
    return runner

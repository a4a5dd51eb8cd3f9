"""`create_app(config)`: the coordinator as an aiohttp application, and `serve()` to run it."""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from comfyfleet.coordinator.api import (
    agent_routes,
    client_routes,
    graceful,
    object_routes,
    openapi,
    stream_routes,
    tenant_routes,
)
from comfyfleet.coordinator.api.auth import KEYRING, auth_middleware, exposure_problem
from comfyfleet.coordinator.api.errors import errors_middleware
from comfyfleet.coordinator.api.keys import CONFIG, COORDINATOR, ROLE, SUPERVISOR
from comfyfleet.coordinator.api.requestlog import request_log_middleware
from comfyfleet.coordinator.api.role import role_middleware
from comfyfleet.coordinator.api.upload import UPLOAD_LOCKS, UploadLocks
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.errors import CoordinatorError
from comfyfleet.coordinator.keyring import KeyRing
from comfyfleet.coordinator.leader import Leadership, SoleLeader
from comfyfleet.coordinator.object_outputs import ObjectOutputs, parse_location
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.store import open_store
from comfyfleet.coordinator.store.base import SharedStore
from comfyfleet.coordinator.store.dsn import mask_url
from comfyfleet.coordinator.web import routes as web_routes
from comfyfleet.coordinator.webhooks.signing import secret_key
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.settings import ConfigError
from comfyfleet.shared.supervisor import Supervisor
from comfyfleet.shared.tls import server_context

log = structlog.get_logger("coordinator")


def create_app(config: CoordinatorConfig, *, loops: bool = True) -> web.Application:
    check_config(config)
    app = web.Application(
        middlewares=[
            request_log_middleware,
            graceful.inflight_middleware,
            errors_middleware,
            auth_middleware,
            role_middleware,
        ],
        client_max_size=max(config.max_body_bytes, config.max_chunk_bytes),
        handler_args={
            "max_line_size": config.max_header_bytes,
            "max_field_size": config.max_header_bytes,
            "max_headers": config.max_headers,
            "keepalive_timeout": config.keepalive_timeout_s,
        },
    )
    app[CONFIG] = config
    app[KEYRING] = KeyRing.load(config.keys_path)
    app[graceful.INFLIGHT] = graceful.InFlight()
    app[UPLOAD_LOCKS] = UploadLocks()
    app.add_routes(client_routes.routes)
    app.add_routes(agent_routes.routes)
    app.add_routes(stream_routes.routes)
    app.add_routes(web_routes.routes)
    app.add_routes(openapi.routes)
    app.add_routes(tenant_routes.routes)
    app.add_routes(object_routes.routes)

    async def coordinator_ctx(app: web.Application) -> AsyncIterator[None]:
        store = open_store(config.data_dir, config.store)
        outputs = (
            OutputFiles(config.outputs_dir, config.max_output_bytes)
            if config.output_store == "local"
            else ObjectOutputs(config)
        )
        coord = Coordinator(config, store, outputs)
        if isinstance(store, SharedStore):  # several coordinators: each begins as a follower
            leadership = Leadership(config, store, coord)
            leadership.start()
            app[ROLE] = leadership
        else:
            coord.recover()
            app[ROLE] = SoleLeader(config.url)
        app[COORDINATOR] = coord
        yield
        for agent in coord.agents.values():
            agent.wake.set()  # release long-polls
        coord.bus.close_all()
        store.close()

    async def loops_ctx(app: web.Application) -> AsyncIterator[None]:
        supervisor = Supervisor("coordinator")
        app[SUPERVISOR] = supervisor
        role = app[ROLE]
        if loops and isinstance(role, Leadership):
            supervisor.start("leadership", role.run)
        elif loops:
            coord = app[COORDINATOR]
            supervisor.start("scheduler", coord.scheduler_loop)
            supervisor.start("sweeper", coord.sweeper_loop)
            supervisor.start("webhooks", coord.outbox.run)
            supervisor.start("retention", coord.retention.loop)
        yield
        await supervisor.stop()
        if isinstance(role, Leadership):
            await role.close()  # idempotent: gives the lease up if the loop did not

    async def close_streams(app: web.Application) -> None:
        if COORDINATOR in app:
            app[COORDINATOR].bus.close_all()  # SSE handlers end before the runner waits

    app.on_shutdown.append(close_streams)
    app.cleanup_ctx.append(coordinator_ctx)
    app.cleanup_ctx.append(loops_ctx)
    return app


def check_config(config: CoordinatorConfig) -> None:
    """Settings that parse but cannot be used: a ConfigError naming the key."""
    if config.webhook_secret is not None:
        try:
            secret_key(config.webhook_secret)
        except InvalidInput as exc:
            raise ConfigError("webhook_secret", exc.message) from None
    if not 0 < config.disk_high_water <= 1:
        raise ConfigError("disk_high_water", "must be a fraction above 0 and at most 1")
    if config.output_store != "local":
        parse_location(config.output_store)  # ConfigError naming output_store
    if config.webhook_concurrency < 1:
        raise ConfigError("webhook_concurrency", "must be at least 1")


# The garbage collector's thresholds in the coordinator process. It keeps every open job in
# memory, so a collection of the older generations walks a large heap, and each request's
# short-lived objects that are alive at a young collection get promoted and walked again. With
# Python's defaults (700, 10, 10) a `bench.placement 1000 8000` coordinator collected ~1,600
# times and spent ~2 s of its ~4 s of CPU there; with these, ~40 times and ~0.4 s (bench/notes.md).
GC_THRESHOLDS = (20_000, 20, 10)


async def serve(config: CoordinatorConfig) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until a background loop dies (exit 1)."""
    gc.set_threshold(*GC_THRESHOLDS)
    app = create_app(config)
    problem = exposure_problem(config.host, app[KEYRING])
    if problem:
        raise ConfigError("host", problem)
    if config.comfy_listen:
        from comfyfleet.coordinator.comfy.app import listen_address

        problem = exposure_problem(listen_address(config.comfy_listen)[0], app[KEYRING])
        if problem:
            raise ConfigError("comfy_listen", problem)
    ssl_context = server_context(config.tls_cert, config.tls_key)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(
        runner, config.host, config.port, reuse_address=True, ssl_context=ssl_context
    )
    await site.start()
    comfy_runner = await _start_comfy(config, app, ssl_context)
    scheme = "https" if ssl_context else "http"
    log.info(
        "coordinator_listening",
        url=f"{scheme}://{config.host}:{config.port}",
        data_dir=str(config.data_dir),
        store=mask_url(config.store) if config.store else "sqlite",
        auth=app[KEYRING].enabled,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_keys, app[KEYRING])
    stopped = asyncio.ensure_future(stop.wait())
    failed = app[SUPERVISOR].failed
    await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if failed.done():
        log.error("coordinator_stopping", reason=failed.result())
        code = 1
    else:
        log.info("coordinator_stopping", reason="signal")
    stopped.cancel()
    # the sweeper stops first: while we stop, agents cannot reach us, and must not be declared
    # lost (and their jobs requeued) for it
    await app[SUPERVISOR].stop()
    if comfy_runner is not None:
        await comfy_runner.cleanup()
    await graceful.stop(runner, [site], app[graceful.INFLIGHT], config.shutdown_grace_s)
    return code


async def _start_comfy(
    config: CoordinatorConfig, app: web.Application, ssl_context: ssl.SSLContext | None
) -> web.AppRunner | None:
    """The ComfyUI facade's listener (`comfy_listen`), or None when it is off."""
    if not config.comfy_listen:
        return None
    from comfyfleet.coordinator.comfy.app import start_comfy_site

    return await start_comfy_site(config, app[COORDINATOR], app[KEYRING], ssl_context)


def _reload_keys(ring: KeyRing) -> None:
    """SIGHUP (systemd ExecReload): pick up keys created or revoked since start."""
    try:
        ring.reload()
        log.info("keys_reloaded", keys=len(ring.entries))
    except CoordinatorError as exc:
        log.error("keys_reload_failed", error=exc.message)

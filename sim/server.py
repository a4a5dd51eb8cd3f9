"""App factory and entry points of the ComfyUI simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.http_faults import faulty_http_middleware
from comfyfleet.sim.routes import add_routes
from comfyfleet.sim.state import SIM_STATE, build_state

__all__ = ["create_app", "listening_line", "run", "serve"]

log = structlog.get_logger(__name__)

LOOP_DIED_EXIT_CODE = 70


def create_app(
    config: SimConfig, *, exit_fn: Callable[[int], None] | None = None
) -> web.Application:
    """A ComfyUI-compatible app. `exit_fn` replaces os._exit for the crash fault (tests)."""
    app = web.Application(
        client_max_size=config.max_upload_size, middlewares=[faulty_http_middleware]
    )
    app[SIM_STATE] = build_state(config, exit_fn if exit_fn is not None else os._exit)
    add_routes(app)
    app.cleanup_ctx.append(_folders)
    app.cleanup_ctx.append(_publisher)
    app.cleanup_ctx.append(_worker)
    return app


async def _folders(app: web.Application) -> AsyncIterator[None]:
    config = app[SIM_STATE].config
    for folder in (config.output_dir, config.input_dir, config.resolved_temp_dir):
        folder.mkdir(parents=True, exist_ok=True)
    yield


def _supervise(app: web.Application, task: asyncio.Task[None]) -> None:
    """A background loop that dies stops the simulator instead of leaving it half alive."""

    def done(t: asyncio.Task[None]) -> None:
        if t.cancelled() or app[SIM_STATE].executor.dead:
            return
        exc = t.exception()
        log.critical("sim.loop_died", task=t.get_name(), error=repr(exc))
        app[SIM_STATE].executor.exit_fn(LOOP_DIED_EXIT_CODE)

    task.add_done_callback(done)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def _publisher(app: web.Application) -> AsyncIterator[None]:
    state = app[SIM_STATE]
    task = asyncio.create_task(state.hub.publish(), name="comfyui-sim-publisher")
    _supervise(app, task)
    yield
    await state.hub.close_all()
    await _stop(task)


async def _worker(app: web.Application) -> AsyncIterator[None]:
    state = app[SIM_STATE]
    task = state.executor.start()
    _supervise(app, task)
    yield
    await _stop(task)


def listening_line(host: str, port: int) -> str:
    return f"comfyui-sim listening on http://{host}:{port}"


async def serve(
    config: SimConfig,
    *,
    announce: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Listen until `stop` is set (or SIGINT/SIGTERM); announce the bound address once."""
    if config.faults.slow_start_s > 0:
        log.info("sim.slow_start", seconds=config.faults.slow_start_s)
        await asyncio.sleep(config.faults.slow_start_s)
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = config.port
    for address in runner.addresses:  # the bound (host, port, ...) of each listening socket
        port = int(address[1])
        break
    line = listening_line(config.host, port)
    log.info("sim.listening", url=line.rsplit(" ", 1)[-1], vram_mb=config.vram_mb)
    if announce is not None:
        announce(line)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(config: SimConfig) -> None:
    """Blocking entry: serve until interrupted, printing the listening line to stdout.

    Logs go to stderr (structlog is set up here unless the caller already did)."""
    if not structlog.is_configured():
        from comfyfleet.shared.logs import configure

        configure()
    asyncio.run(serve(config, announce=_print_line))

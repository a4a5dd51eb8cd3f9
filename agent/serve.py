"""Running the agent daemon: its loops under one supervisor, until SIGTERM (drain), SIGINT or a
dead loop."""

from __future__ import annotations

import asyncio
import signal
from typing import cast

import aiohttp
import structlog

from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.coordinator_client import AgentError
from comfyfleet.agent.daemon import Agent
from comfyfleet.agent.probe import ResourceProbe
from comfyfleet.agent.supervise.supervision import (
    LimitedProbe,
    Supervision,
    host_limits,
    plan_for,
)
from comfyfleet.shared.supervisor import Supervisor

log = structlog.get_logger("agent")


async def serve(config: AgentConfig) -> int:
    """Run until SIGTERM (drain, exit 0), SIGINT, or a dead loop (exit 1)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    probe = ResourceProbe(config.gpu_source)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drain = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, drain.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with aiohttp.ClientSession() as session:
        try:  # ComfyUIs the agent runs: where they listen, the host limits of containers
            config, specs = plan_for(config, probe)
            agent = Agent(
                config, session, cast(ResourceProbe, LimitedProbe(probe, host_limits(specs)))
            )
            agent.state.load()
            supervision = Supervision(config, specs, agent, session)
        except (AgentError, OSError, ValueError) as exc:
            log.error("agent_config_error", error=str(exc))
            probe.close()
            return 2
        await supervision.begin()  # adopt what an earlier agent left running
        await asyncio.to_thread(agent.load_outbox)
        await agent.check_instances()
        await agent.refresh_inventory()
        supervisor = Supervisor("agent")
        if supervision.healers:
            supervisor.start("instances", supervision.run)
        supervisor.start("heartbeat", agent.heartbeat_loop)
        supervisor.start("lease", agent.lease_loop)
        supervisor.start("health", agent.health_loop)
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(drain.wait()),
            supervisor.failed,
        ]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if supervisor.failed.done():
            log.error("agent_stopping", reason=supervisor.failed.result())
            code = 1
        elif drain.is_set():
            await agent.drain("SIGTERM")
            try:  # tell the coordinator at once rather than waiting for a heartbeat
                await agent.coord.heartbeat(await agent.heartbeat_msg())
            except AgentError:
                pass
        for w in waiters[:2]:
            w.cancel()
        await supervisor.stop()
        await agent.shutdown()
        await supervision.close(stop_instances=True)
        probe.close()
    log.info("agent_stopped", code=code)
    return code

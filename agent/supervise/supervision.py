"""All the managed ComfyUIs of one agent: built from the config, run as one daemon loop.

The daemon calls, in order: `plan_for(config, probe)` (the instances and the config whose
`comfyui_urls` point at them), `Supervision(...)` once the Agent exists, `begin()` (adopt what an
earlier agent left running), `run()` under its supervisor, and `close()` at exit. With only
external instances there is nothing to supervise and `plan_for` returns None.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from comfyfleet.agent.comfyui.client import ComfyUIClient
from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.probe import HostSnapshot, ResourceProbe
from comfyfleet.agent.supervise.caught import BreakBook
from comfyfleet.agent.supervise.docker_mode import DockerRuntime
from comfyfleet.agent.supervise.healer import Healer, Runtime, Timing, load_warmup
from comfyfleet.agent.supervise.logfile import LogFile
from comfyfleet.agent.supervise.policy import HealPolicy
from comfyfleet.agent.supervise.process import ProcessRuntime
from comfyfleet.agent.supervise.spec import InstanceConfigError, InstanceSpec, plan

if TYPE_CHECKING:
    from comfyfleet.agent.daemon import Agent

log = structlog.get_logger("agent.instances")


def gpu_count(probe: ResourceProbe) -> int:
    return len(probe.gpus({})) if probe.source == "nvml" else 0


def plan_for(
    config: AgentConfig, probe: ResourceProbe
) -> tuple[AgentConfig, tuple[InstanceSpec, ...]]:
    """The instances to drive and the config pointing at them (comfyui_urls in order)."""
    specs = plan(config, gpu_count(probe))
    gpus = config.comfyui_gpus  # external only: as configured
    if any(s.managed for s in specs):  # each managed instance drives its planned GPU
        gpus = tuple(s.gpu for s in specs if s.gpu is not None)
        gpus = gpus if len(gpus) == len(specs) else ()
    urls = tuple(s.url for s in specs)
    return dataclasses.replace(config, comfyui_urls=urls, comfyui_gpus=gpus), specs


def docker_client(config: AgentConfig) -> Any:
    import docker

    try:
        if config.docker_url:
            return docker.DockerClient(base_url=config.docker_url, timeout=60)
        return docker.from_env(timeout=60)
    except docker.errors.DockerException as exc:
        where = config.docker_url or os.environ.get("DOCKER_HOST") or "the local socket"
        raise InstanceConfigError("docker_url", f"cannot reach Docker at {where}: {exc}") from None


class Supervision:
    def __init__(
        self,
        config: AgentConfig,
        specs: tuple[InstanceSpec, ...],
        agent: Agent,
        session: aiohttp.ClientSession,
        *,
        timing: Timing | None = None,
    ) -> None:
        timing = timing or Timing(probe_timeout_s=min(5.0, max(0.5, config.heal_http_silent_s / 3)))
        self.config = config
        self.policy = HealPolicy.from_config(config)
        self.breaks = BreakBook()
        warmup = load_warmup(config.warmup_workflow)
        managed = [s for s in specs if s.managed]
        self.docker = docker_client(config) if any(s.kind == "docker" for s in managed) else None
        self.healers = [
            Healer(
                spec,
                self._runtime(spec),
                ComfyUIClient(session, spec.url, request_timeout_s=timing.probe_timeout_s),
                agent,
                self.policy,
                self.breaks,
                warmup=warmup,
                timing=timing,
            )
            for spec in managed
        ]

    def _runtime(self, spec: InstanceSpec) -> Runtime:
        c = self.config
        if spec.kind == "docker":
            return DockerRuntime(
                spec,
                self.docker,
                c.agent_id,
                stop_grace_s=c.comfyui_stop_grace_s,
                log_max_bytes=c.comfyui_log_max_bytes,
                log_files=c.comfyui_log_backups,
            )
        logfile = LogFile(
            c.data_dir / "logs" / f"comfyui-{spec.instance_id}.log",
            c.comfyui_log_max_bytes,
            c.comfyui_log_backups,
        )
        return ProcessRuntime(spec, c.data_dir / "run", logfile, c.comfyui_stop_grace_s)

    async def begin(self) -> None:
        for healer in self.healers:
            await healer.begin()

    async def run(self) -> None:
        """One loop per instance; a loop that dies ends this one (and so the daemon)."""
        await asyncio.gather(
            *(asyncio.create_task(h.run(), name=f"heal:{h.spec.instance_id}") for h in self.healers)
        )

    async def close(self, stop_instances: bool) -> None:
        for healer in self.healers:
            await healer.close(stop_instances)
        if self.docker is not None:
            self.docker.close()


def host_limits(specs: tuple[InstanceSpec, ...]) -> tuple[int, float] | None:
    """RAM (MB) and CPUs the instances may use together when every one is a container with
    limits (0: one of them has none): the agent reports that as its capacity, so the ram_mb and
    cpu that jobs reserve fit inside the containers."""
    limited = [s.docker for s in specs]
    if not limited or any(d is None for d in limited):
        return None
    mem = [d.mem_limit_mb for d in limited if d is not None]
    cpus = [d.cpus for d in limited if d is not None]
    return (
        sum(mem) if all(m > 0 for m in mem) else 0,
        sum(cpus) if all(c > 0 for c in cpus) else 0.0,
    )


def limit_host(h: HostSnapshot, limits: tuple[int, float] | None) -> HostSnapshot:
    """The host as jobs may use it: RAM and CPUs capped by the containers' limits (0: none)."""
    if limits is None:
        return h
    mem, cpus = limits
    total, avail, count = h.ram_total_mb, h.ram_available_mb, h.cpu_count
    if mem > 0:
        total, avail = min(total, mem), min(avail, mem)
    if cpus > 0:
        count = max(1, min(count, math.floor(cpus)))
    return dataclasses.replace(h, ram_total_mb=total, ram_available_mb=avail, cpu_count=count)


class LimitedProbe:
    """A ResourceProbe whose host() reports the containers' limits as the host's capacity."""

    def __init__(self, probe: ResourceProbe, limits: tuple[int, float] | None) -> None:
        self._probe = probe
        self._limits = limits
        self.source = probe.source

    def host(self) -> HostSnapshot:
        return limit_host(self._probe.host(), self._limits)

    def gpus(self, stats: Any) -> Any:
        return self._probe.gpus(stats)

    def close(self) -> None:
        self._probe.close()

"""A ComfyUI the agent runs as a Docker container (Docker SDK for Python, `docker` package).

One container per instance: the image and command from the config, host networking (ComfyUI
listens on the instance's port), the GPU by a device request, memory (no swap beyond it), CPU
and /dev/shm limits, model and custom-node folders mounted read-only, input and output folders
mounted read-write, the engine's json-file log driver rotating the log, no restart policy (the
agent heals), never privileged. Labels name the agent, the instance and the spec's fingerprint:
a restarted agent adopts its running container when they match and removes it otherwise.

`run_kwargs` (pure) builds the arguments of `containers.run`; `DockerRuntime` calls the SDK
(blocking) in worker threads.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import structlog

from comfyfleet.agent.supervise.spec import InstanceSpec

log = structlog.get_logger("agent.instances")

LABEL_AGENT = "comfyfleet.agent"
LABEL_INSTANCE = "comfyfleet.instance"
LABEL_FINGERPRINT = "comfyfleet.fingerprint"


def container_name(agent_id: str, instance_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"comfyfleet-{agent_id}-{instance_id}")


def labels_of(agent_id: str, spec: InstanceSpec) -> dict[str, str]:
    return {
        LABEL_AGENT: agent_id,
        LABEL_INSTANCE: spec.instance_id,
        LABEL_FINGERPRINT: spec.fingerprint(),
    }


def run_kwargs(
    agent_id: str, spec: InstanceSpec, log_max_bytes: int, log_files: int
) -> dict[str, Any]:
    """Keyword arguments for `DockerClient.containers.run` (detached)."""
    from docker.types import DeviceRequest, LogConfig

    d = spec.docker
    if d is None:
        raise ValueError(f"instance {spec.instance_id} is not a docker instance")
    kwargs: dict[str, Any] = {
        "image": d.image,
        "name": container_name(agent_id, spec.instance_id),
        "detach": True,
        "labels": labels_of(agent_id, spec),
        "network_mode": "host",
        "privileged": False,
        "shm_size": f"{d.shm_size_mb}m",
        "volumes": {
            m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in d.mounts
        },
        "log_config": LogConfig(
            type="json-file",
            config={"max-size": str(max(log_max_bytes, 1 << 20)), "max-file": str(log_files + 1)},
        ),
        "environment": {"PYTHONUNBUFFERED": "1"},
    }
    if spec.command:
        kwargs["command"] = list(spec.command)
    if d.mem_limit_mb > 0:
        kwargs["mem_limit"] = f"{d.mem_limit_mb}m"
        kwargs["memswap_limit"] = f"{d.mem_limit_mb}m"  # no swap beyond the limit
    if d.cpus > 0:
        kwargs["nano_cpus"] = int(d.cpus * 1e9)
    if d.gpu_request and spec.gpu is not None:
        kwargs["device_requests"] = [
            DeviceRequest(device_ids=[str(spec.gpu)], capabilities=[["gpu"]])
        ]
    return kwargs


def exit_detail(state: dict[str, Any]) -> str | None:
    """None while the container runs (a paused one too: that is a hang, seen by HTTP)."""
    if state.get("Running"):
        return None
    detail = f"container exit code {state.get('ExitCode')}"
    if state.get("OOMKilled"):
        detail += " (killed: out of memory)"
    if state.get("Error"):
        detail += f": {state['Error']}"
    return detail


def memory_mb(stats: dict[str, Any]) -> int | None:
    """What the container's processes hold (page cache excluded), from the stats endpoint."""
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage")
    if usage is None:
        return None
    inner = mem.get("stats") or {}
    cache = inner.get("inactive_file", inner.get("total_inactive_file", inner.get("cache", 0)))
    return max(0, int(usage) - int(cache or 0)) >> 20


class DockerRuntime:
    kind = "docker"

    def __init__(
        self,
        spec: InstanceSpec,
        client: Any,  # docker.DockerClient
        agent_id: str,
        *,
        stop_grace_s: float = 10.0,
        log_max_bytes: int = 10 << 20,
        log_files: int = 3,
    ) -> None:
        self.spec = spec
        self.client = client
        self.agent_id = agent_id
        self.stop_grace_s = stop_grace_s
        self.log_max_bytes = log_max_bytes
        self.log_files = log_files
        self.container: Any = None
        self.start_error = ""

    @property
    def describe(self) -> str:
        return f"container {self.container.short_id}" if self.container is not None else "none"

    def limits(self) -> tuple[int, float] | None:
        d = self.spec.docker
        return None if d is None else (d.mem_limit_mb, d.cpus)

    def _ours(self) -> list[Any]:
        return list(
            self.client.containers.list(
                all=True,
                filters={
                    "label": [
                        f"{LABEL_AGENT}={self.agent_id}",
                        f"{LABEL_INSTANCE}={self.spec.instance_id}",
                    ]
                },
            )
        )

    async def adopt(self) -> bool:
        def find() -> Any:
            keep = None
            for c in self._ours():
                fits = c.labels.get(LABEL_FINGERPRINT) == self.spec.fingerprint()
                if keep is None and fits and c.status in ("running", "paused"):
                    keep = c
                else:
                    log.info("container_removed", instance=self.spec.instance_id, id=c.short_id)
                    c.remove(force=True)
            return keep

        self.container = await asyncio.to_thread(find)
        if self.container is not None:
            log.info("instance_adopted", instance=self.spec.instance_id, id=self.container.short_id)
        return self.container is not None

    async def start(self) -> None:
        from docker.errors import DockerException

        kwargs = run_kwargs(self.agent_id, self.spec, self.log_max_bytes, self.log_files)

        def run() -> Any:
            for c in self._ours():
                c.remove(force=True)
            return self.client.containers.run(**kwargs)

        try:
            self.container = await asyncio.to_thread(run)
        except DockerException as exc:
            log.error("container_start_failed", instance=self.spec.instance_id, error=str(exc))
            self.container = None
            self.start_error = str(exc)
            return
        log.info("instance_started", instance=self.spec.instance_id, id=self.container.short_id)

    async def poll(self) -> str | None:
        from docker.errors import DockerException, NotFound

        c = self.container
        if c is None:
            return f"could not be started: {self.start_error}"[:500]
        try:
            await asyncio.to_thread(c.reload)
        except NotFound:
            return "container gone"
        except DockerException as exc:
            log.warning("container_poll_failed", instance=self.spec.instance_id, error=str(exc))
            return None  # the engine is busy or restarting: not a verdict on the container
        return exit_detail(c.attrs.get("State") or {})

    async def stop(self, hard: bool = False) -> None:
        """Stop (SIGTERM, SIGKILL after the grace; `hard`: SIGKILL at once) and remove."""
        from docker.errors import DockerException

        c = self.container
        if c is None:
            return

        def stop() -> None:
            try:
                c.reload()
                if hard:
                    c.kill()
                else:
                    if (c.attrs.get("State") or {}).get("Paused"):
                        c.unpause()
                    c.stop(timeout=int(self.stop_grace_s))
            except DockerException:
                pass
            try:
                c.remove(force=True)
            except DockerException:
                pass

        await asyncio.to_thread(stop)
        self.container = None

    async def ram_mb(self) -> int | None:
        from docker.errors import DockerException

        c = self.container
        if c is None:
            return None
        try:
            stats = await asyncio.to_thread(c.stats, stream=False, one_shot=True)
        except DockerException:
            return None
        return memory_mb(stats)

    async def log_tail(self) -> str:
        from docker.errors import DockerException

        c = self.container
        if c is None:
            return self.start_error
        try:
            raw = await asyncio.to_thread(c.logs, tail=60)
        except DockerException as exc:
            return f"(container log unavailable: {exc})"
        return bytes(raw).decode(errors="replace")[-4000:]

    async def housekeeping(self) -> None:
        return None  # the engine rotates the json-file log

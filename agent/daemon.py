"""The agent: register, heartbeat, lease, run jobs, drain (its loops; agent/serve.py runs them)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import structlog

from comfyfleet import __version__
from comfyfleet.agent.comfy_files import ComfyFiles, sweep
from comfyfleet.agent.comfyui.client import ComfyUIClient, ComfyUIError
from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.coordinator_client import (
    AgentError,
    CoordinatorClient,
    CoordinatorUnavailable,
    Refused,
)
from comfyfleet.agent.instances import Instance, gpu_info, pipeline_client_id, replay_assignment
from comfyfleet.agent.inventory import Inventory, common, read_inventory
from comfyfleet.agent.outbox import Outbox, Report
from comfyfleet.agent.probe import (
    ResourceProbe,
    gpus_from_system_stats,
    instance_gpu,
)
from comfyfleet.agent.profile import VramWatch, comfyui_held_mb
from comfyfleet.agent.runner import JobRunner
from comfyfleet.agent.state import HeldJob, StateFile
from comfyfleet.shared import protocol as p
from comfyfleet.shared.retry import RetryPolicy
from comfyfleet.shared.slots import slot_load
from comfyfleet.shared.tls import client_context

log = structlog.get_logger("agent")
# No limit: the agent is useless unregistered. At most ~3 s apart: a coordinators' failover takes
# seconds, and a follower's 503 during the election asks for 1 s (Retry-After).
REGISTERED = RetryPolicy(retry_also=(AgentError,), wait_max_s=2.0)


class Agent:
    def __init__(
        self, config: AgentConfig, session: aiohttp.ClientSession, probe: ResourceProbe
    ) -> None:
        self.config = config
        self.session = session
        self.probe = probe
        self.coord = CoordinatorClient(
            session,
            config.coordinator_url,
            config.agent_id,
            config.request_timeout_s,
            token=config.agent_token,
            ssl_context=(
                client_context(config.ca_file) if "https:" in config.coordinator_url else None
            ),
        )
        self.instances = {
            str(i): Instance(
                str(i),
                url,
                ComfyUIClient(session, url, request_timeout_s=config.comfyui_timeout_s),
                f"comfyfleet-{config.agent_id}-{i}",  # stable: re-attach needs it
                capacity=config.capacity,
            )
            for i, url in enumerate(config.comfyui_urls)
        }
        for ordinal, inst in enumerate(self.instances.values()):
            folders = config.folders_of(ordinal)
            if folders.any:
                inst.files = ComfyFiles(folders, config.comfy_ledger_dir(inst.instance_id))
            inst.vram = VramWatch(lambda inst=inst: self.held_vram_mb(inst), config.vram_sample_s)
        self.state = StateFile(config.state_file)
        self.outbox = Outbox(config.spool_dir)
        self.reports: dict[tuple[str, int], Report] = {}  # found at start, not yet resent
        self.runners: dict[tuple[str, int], JobRunner] = {}  # by (job id, attempt)
        self.tasks: set[asyncio.Task[None]] = set()
        self.heartbeat_interval = 5.0
        self.lease_wait = 25.0
        self.chunk_size = 1 << 20
        self.draining = False
        self.changed = asyncio.Event()  # a slot freed, health changed: lease/heartbeat now
        self.registered = asyncio.Event()
        self.inventory: Inventory | None = None  # models and node classes all instances have
        self.inventory_sent: Inventory | None = None
        self.inventory_at = float("-inf")
        self.instance_id = secrets.token_hex(8)  # this process, in Register (issue 12.7)

    # ------------------------------------------------------------------ resources

    async def check_instances(self) -> bool:
        """Ask every ComfyUI for /system_stats; returns True if any health changed."""
        changed = False
        for inst in self.instances.values():
            try:
                stats = await inst.client.system_stats()
                healthy, error = True, None
                inst.stats = stats
                ordinal = int(inst.instance_id)
                inst.gpu_index = instance_gpu(
                    stats, ordinal, self.config.gpu_of(ordinal), self.probe.source == "nvml"
                )
            except ComfyUIError as exc:
                healthy, error = False, str(exc)
            closed = inst.gate() if healthy and inst.gate is not None else None
            if closed is not None:  # a ComfyUI the agent runs: restarting, warming up, ...
                healthy, error = False, closed
            if healthy != inst.healthy:
                changed = True
                log.info(
                    "instance_health",
                    instance=inst.instance_id,
                    url=inst.url,
                    healthy=healthy,
                    error=error,
                )
            inst.healthy, inst.error = healthy, error
        return changed

    async def refresh_inventory(self) -> None:
        """Re-read models and node classes from the healthy instances (best effort)."""
        found = []
        for inst in self.instances.values():
            if not inst.healthy:
                continue
            try:
                found.append(await read_inventory(inst.client))
            except ComfyUIError as exc:
                log.warning("inventory_failed", instance=inst.instance_id, error=str(exc))
        self.inventory_at = asyncio.get_running_loop().time()
        if found:
            self.inventory = common(found)

    def inventory_fields(self, changed_only: bool) -> dict[str, Any]:
        inv = self.inventory
        if inv is None or (changed_only and inv == self.inventory_sent):
            return {}
        sent, self.inventory_sent = self.inventory_sent, inv
        fields: dict[str, Any] = {
            "models": sorted(inv.models),
            "node_classes": sorted(inv.node_classes),
        }
        if not changed_only or sent is None or sent.object_info != inv.object_info:
            fields["comfyui"] = inv.catalog()  # ~0.5 MB for a full ComfyUI: only when changed
        return fields

    def mark_lost(self, instance_id: str, reason: str) -> None:
        inst = self.instances.get(instance_id)
        if inst is not None and inst.healthy:
            inst.healthy, inst.error = False, reason
            log.warning("instance_unhealthy", instance=instance_id, reason=reason)
            self.changed.set()

    async def held_vram_mb(self, inst: Instance) -> int | None:
        """What a job's VRAM peak is read from: NVML's used memory of the instance's GPU when
        NVML sees it (nothing asked of ComfyUI), else ComfyUI's own /system_stats; None, with
        no I/O, for a CPU-only instance."""
        if inst.gpu_index is None:
            return None
        if self.probe.source == "nvml":
            snaps = await asyncio.to_thread(self.probe.gpus, {})
            return next((s.vram_used_mb for s in snaps if s.index == inst.gpu_index), None)
        return comfyui_held_mb(await inst.client.system_stats())

    async def gpus(self) -> list[p.GpuInfo]:
        """Per-GPU snapshot; free VRAM counts what our own ComfyUI holds as reclaimable.

        ComfyUI keeps models cached in VRAM and unloads them when a prompt needs the room, so
        memory held by our instances (`torch_vram_total` in /system_stats) is free for placement;
        the coordinator's reservations account for jobs that run. Memory other processes use
        stays used.
        """
        own: dict[int, int] = {}
        for inst in self.instances.values():
            if inst.gpu_index is not None and inst.healthy:
                own[inst.gpu_index] = own.get(inst.gpu_index, 0) + comfyui_held_mb(inst.stats)
        if self.probe.source == "nvml":
            snaps = await asyncio.to_thread(self.probe.gpus, {})
            return [gpu_info(s, s.index, own.get(s.index, 0)) for s in snaps]
        out = []
        for inst in self.instances.values():
            if inst.gpu_index is None or not inst.stats:
                continue
            snaps = gpus_from_system_stats(inst.stats, int(inst.instance_id))
            if snaps:
                out.append(gpu_info(snaps[0], inst.gpu_index, own.get(inst.gpu_index, 0)))
        return out

    async def host(self) -> p.HostInfo:
        h = await asyncio.to_thread(self.probe.host)
        return p.HostInfo(
            hostname=h.hostname,
            cpu_count=h.cpu_count,
            load_1m=h.load_1m,
            ram_total_mb=h.ram_total_mb,
            ram_available_mb=h.ram_available_mb,
        )

    def free(self) -> dict[str, int]:
        if self.draining:
            return {}
        held: dict[str, int] = {}
        finishing: dict[str, int] = {}
        for r in self.runners.values():
            iid = r.job.instance_id
            held[iid] = held.get(iid, 0) + 1
            finishing[iid] = finishing.get(iid, 0) + r.prompt_done
        return {
            i.instance_id: max(
                0,
                i.capacity
                - slot_load(
                    held.get(i.instance_id, 0), finishing.get(i.instance_id, 0), i.capacity
                ),
            )
            for i in self.instances.values()
            if i.healthy
        }

    def finishing(self) -> list[p.JobRef]:
        """Attempts whose prompt ComfyUI has finished (their places in its queue are free)."""
        return [r.ref for r in self.runners.values() if r.prompt_done]

    # ------------------------------------------------------------------ protocol

    def load_outbox(self) -> None:
        """At start: the reports a previous run kept but never got acknowledged (sent again
        after registering), and away with spool folders nothing refers to."""
        self.reports = {r.key: r for r in self.outbox.load()}
        keep = set(self.state.jobs) | set(self.reports)
        swept = self.outbox.sweep(keep)
        if self.reports or swept:
            log.info("outbox_loaded", reports=len(self.reports), swept=swept)
        for inst in self.instances.values():  # what earlier runs left in ComfyUI's folders
            if inst.files is not None and (removed := sweep(inst.files, keep)):
                log.info("comfy_files_swept", instance=inst.instance_id, removed=removed)

    async def register(self) -> None:
        held = {k: j for k, j in self.state.jobs.items() if k not in self.reports}
        running = [r.running_info() for r in self.runners.values()]
        running += [
            p.RunningJob(
                job_id=j.job_id, attempt=j.attempt, instance_id=j.instance_id, prompt_id=j.prompt_id
            )
            for k, j in held.items()
            if k not in self.runners
        ]
        running += [
            p.RunningJob(
                job_id=r.finish.job_id,
                attempt=r.finish.attempt,
                instance_id=r.instance_id,
                prompt_id=r.prompt_id,
            )
            for k, r in self.reports.items()
            if k not in self.runners
        ]
        msg = p.Register(
            agent_id=self.config.agent_id,
            version=__version__,
            host=await self.host(),
            gpus=await self.gpus(),
            instances=[i.info() for i in self.instances.values()],
            labels=self.config.labels,
            running=running,
            instance_id=self.instance_id,
            **self.inventory_fields(changed_only=False),
        )
        reply = await self.coord.register(msg)
        self.heartbeat_interval = reply.heartbeat_interval_s
        self.lease_wait = reply.lease_wait_s
        self.chunk_size = reply.chunk_size
        self.coord.direct_uploads = reply.direct_uploads
        dropped = {(d.job_id, d.attempt) for d in reply.drop}
        for key in dropped:
            if key in self.runners:
                self.runners[key].stop("drop")
            self.state.remove(*key)
            if self.reports.pop(key, None) is not None:
                await asyncio.to_thread(self.outbox.remove, *key)
        for key, report in list(self.reports.items()):  # send what the coordinator never got
            if key not in self.runners:
                self.start_runner(replay_assignment(report), report=report)
            del self.reports[key]
        for key, job in held.items():  # re-attach to prompts still in ComfyUI
            if key not in dropped and key not in self.runners:
                self.start_runner(
                    p.Assignment(
                        job_id=job.job_id,
                        attempt=job.attempt,
                        instance_id=job.instance_id,
                        workflow={},
                        timeout_s=job.timeout_s,
                    ),
                    held=job,
                )
        self.registered.set()
        log.info(
            "registered",
            coordinator=self.coord.endpoints.current,
            instances=len(self.instances),
            running=len(self.runners),
            dropped=len(dropped),
        )

    async def register_until_done(self) -> None:
        """Register; any failure (even a refusal: a key not yet installed) is tried again, each
        time with a fresh message."""
        await REGISTERED.call(self.register, "register until done")

    def start_runner(
        self, job: p.Assignment, held: HeldJob | None = None, report: Report | None = None
    ) -> None:
        """Run one attempt (`held`: re-attach to its prompt; `report`: only send its report).
        An older attempt of the same job still here is stale: it is dropped."""
        inst = self.instances.get(job.instance_id)
        if inst is None and report is not None:  # the instance is gone; the report still goes
            inst = next(iter(self.instances.values()))
        if inst is None:
            log.error("unknown_instance", job_id=job.job_id, instance=job.instance_id)
            return
        key = (job.job_id, job.attempt)
        for (job_id, attempt), older in self.runners.items():
            if job_id == job.job_id and attempt < job.attempt:
                log.info("job_stop", job_id=job_id, attempt=attempt, reason="newer attempt")
                older.stop("drop")
        runner = JobRunner(
            job,
            inst.client,
            pipeline_client_id(inst, self.runners.values(), held),
            self.coord,
            self.state,
            self.config,
            self.chunk_size,
            held=held,
            on_lost=lambda reason, i=inst.instance_id: self.mark_lost(i, reason),
            on_done=self.changed.set,  # its place in ComfyUI's queue is free: lease now
            queue_wait_s=sum(
                r.job.timeout_s
                for r in self.runners.values()
                if r.job.instance_id == inst.instance_id
            ),
            report=report,
            outbox=self.outbox,
            vram=inst.vram,
            files=inst.files,
        )
        self.runners[key] = runner

        async def run() -> None:
            try:
                await runner.run()
            finally:
                if self.runners.get(key) is runner:
                    del self.runners[key]
                self.changed.set()

        task = asyncio.create_task(run(), name=f"job:{job.job_id}:{job.attempt}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def apply_orders(self, cancel: list[p.JobRef], drop: list[p.JobRef] | None = None) -> None:
        for ref, reason in [(c, "cancel") for c in cancel] + [(d, "drop") for d in drop or []]:
            runner = self.runners.get((ref.job_id, ref.attempt))
            if runner is not None:
                log.info("job_stop", job_id=ref.job_id, reason=reason)
                runner.stop(reason)

    async def heartbeat_msg(self) -> p.Heartbeat:
        return p.Heartbeat(
            agent_id=self.config.agent_id,
            host=await self.host(),
            gpus=await self.gpus(),
            instances=[i.info() for i in self.instances.values()],
            running=[r.running_info() for r in self.runners.values()],
            draining=self.draining,
            **self.inventory_fields(changed_only=True),
        )

    # ------------------------------------------------------------------ loops

    async def heartbeat_loop(self) -> None:
        await self.register_until_done()
        while True:
            try:
                reply = await self.coord.heartbeat(await self.heartbeat_msg())
                self.heartbeat_interval = reply.heartbeat_interval_s
                self.apply_orders(reply.cancel, reply.drop)
                if reply.drain and not self.draining:
                    asyncio.create_task(self.drain("coordinator asked"))  # noqa: RUF006
                if reply.reregister:
                    log.info("reregister", reason="coordinator does not know this agent")
                    await self.register_until_done()
            except AgentError as exc:
                log.warning("heartbeat_failed", error=str(exc))
            await asyncio.sleep(self.heartbeat_interval)

    async def lease_loop(self) -> None:
        await self.registered.wait()
        while not self.draining:
            free = self.free()
            if not any(free.values()):
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
            try:
                reply = await self.coord.lease(free, self.lease_wait, self.finishing())
            except Refused as exc:
                if exc.status == 404:
                    await self.register_until_done()
                else:
                    log.error("lease_refused", status=exc.status, error=exc.error)
                    await asyncio.sleep(1.0)
                continue
            except CoordinatorUnavailable as exc:
                log.warning("lease_failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            self.apply_orders(reply.cancel)
            for job in reply.jobs:
                if (job.job_id, job.attempt) in self.runners:
                    continue
                log.info(
                    "job_leased", job_id=job.job_id, attempt=job.attempt, instance=job.instance_id
                )
                self.start_runner(job)
            if reply.drain and not self.draining:
                asyncio.create_task(self.drain("coordinator asked"))  # noqa: RUF006

    async def health_loop(self) -> None:
        while True:
            if await self.check_instances():
                self.changed.set()
                self.inventory_at = float("-inf")  # an instance came or went: read again
            loop = asyncio.get_running_loop()
            if loop.time() - self.inventory_at >= self.config.inventory_refresh_s:
                await self.refresh_inventory()
            await asyncio.sleep(self.config.health_interval_s)

    async def drain(self, why: str) -> None:
        """No new leases; running jobs get the grace period, the rest go back (no retry spent)."""
        if self.draining:
            return
        self.draining = True
        log.info(
            "drain_start", reason=why, running=len(self.runners), grace_s=self.config.drain_grace_s
        )
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.config.drain_grace_s)
        for runner in list(self.runners.values()):
            runner.stop("drain")
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=60)
        log.info("drain_done")

    async def shutdown(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            await self.state.sync()  # what the runners changed last
        except OSError as exc:
            log.error("state_file_write_failed", error=str(exc))

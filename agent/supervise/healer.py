"""The I/O shell around `policy.step` for one managed ComfyUI: observe, decide, act, publish.

Each tick it polls the runtime (process or container), asks ComfyUI for /system_stats, looks at
the agent's jobs on the instance (which one executes, when each last had an event, which ended),
measures idle memory when a leak check is due, and feeds that to the policy. It then carries out
what the policy asks: start, restart (jobs on the instance are marked caught first, see
caught.py), kill, warm up (re-read the inventory, run the warm-up workflow), POST /free. Last it
publishes: the instance's gate (no placement unless the policy accepts jobs) and the state,
uptime and restart fields the heartbeat carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from comfyfleet.agent.comfyui.client import ComfyUIClient, ComfyUIError, parse_queue
from comfyfleet.agent.comfyui.driver import run_prompt
from comfyfleet.agent.inventory import read_inventory
from comfyfleet.agent.profile import comfyui_held_mb
from comfyfleet.agent.supervise import caught
from comfyfleet.agent.supervise.monitor import SocketWatch
from comfyfleet.agent.supervise.policy import (
    BREAKING,
    Action,
    HealPolicy,
    Health,
    Observation,
    step,
)
from comfyfleet.agent.supervise.records import RestartLog
from comfyfleet.agent.supervise.spec import InstanceSpec

if TYPE_CHECKING:
    from comfyfleet.agent.daemon import Agent

log = structlog.get_logger("agent.instances")
Key = tuple[str, int]  # (job id, attempt)


class Runtime(Protocol):
    """How one managed instance runs: process.ProcessRuntime or docker_mode.DockerRuntime."""

    kind: str

    @property
    def describe(self) -> str: ...
    def limits(self) -> tuple[int, float] | None: ...
    async def adopt(self) -> bool: ...
    async def start(self) -> None: ...
    async def poll(self) -> str | None: ...
    async def stop(self, hard: bool = False) -> None: ...
    async def ram_mb(self) -> int | None: ...
    async def log_tail(self) -> str: ...
    async def housekeeping(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Timing:
    tick_s: float = 0.5
    start_tick_s: float = 0.1  # while (re)starting: is it up yet?
    probe_timeout_s: float = 5.0


def last_line(log_tail: str) -> str:
    """`; log: <its last non-empty line>` (or nothing), to say why an instance ended."""
    line = next((ln.strip() for ln in reversed(log_tail.splitlines()) if ln.strip()), "")
    return f"; log: {line[:300]}" if line else ""


def load_warmup(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    graph = json.loads(path.read_text())
    if not isinstance(graph, dict) or not graph:
        raise ValueError(f"{path}: a warm-up workflow is a non-empty API-format object")
    return graph


class Healer:
    """Keeps one managed instance running for `agent`."""

    def __init__(
        self,
        spec: InstanceSpec,
        runtime: Runtime,
        client: ComfyUIClient,
        agent: Agent,
        policy: HealPolicy,
        breaks: caught.BreakBook,
        *,
        warmup: Mapping[str, Any] | None = None,
        timing: Timing | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        self.client = client
        self.agent = agent
        self.policy = policy
        self.breaks = breaks
        self.warmup = warmup
        self.timing = timing or Timing()
        self.rng = rng
        self.health = Health()
        self.restarts = RestartLog()
        self.watch = SocketWatch(
            client.session, client.base_url, f"comfyfleet-watch-{agent.config.agent_id}"
        )
        self.jobs: dict[Key, float | None] = {}  # attempt on the instance -> when ComfyUI took it
        self.warm_task: asyncio.Task[str] | None = None
        self.recheck: asyncio.Task[None] | None = None
        self.stats: dict[str, Any] = {}
        self.http_ok = False  # the last probe answered
        self.log = log.bind(instance=spec.instance_id, kind=spec.kind)

    # ------------------------------------------------------------------ lifecycle

    async def begin(self) -> None:
        """Adopt a running instance left by an earlier agent, or leave it to the first step."""
        if await self.runtime.adopt():
            self.health = Health(phase="starting", since=time.monotonic())
            self.log.info("instance_adopt", runtime=self.runtime.describe)
        self.watch.start()
        self.publish()

    async def run(self) -> None:
        while True:
            await self.tick()
            starting = self.health.phase in ("starting", "warming")  # ready sooner: look often
            await asyncio.sleep(self.timing.start_tick_s if starting else self.timing.tick_s)

    async def tick(self) -> None:
        obs = await self.observe()
        self.health, actions = step(self.health, obs, self.policy)
        for action in actions:
            await self.act(action, obs)
        if obs.exited is not None and not actions and self.jobs:
            await self.catch_jobs("start_failed", obs.exited, None)
        await self.runtime.housekeeping()
        self.publish()
        inst = self.agent.instances.get(self.spec.instance_id)
        opening = self.health.accepting and inst is not None and not inst.healthy
        if opening and self.http_ok and (self.recheck is None or self.recheck.done()):
            # (re)started and ready: the agent checks it now (health, GPU, stats) instead of at
            # its next health round, and reads its inventory again. In the background: another
            # instance that hangs must not hold this loop.
            self.recheck = asyncio.create_task(self._recheck(), name="comfyui-recheck")

    async def _recheck(self) -> None:
        if await self.agent.check_instances():
            self.agent.inventory_at = float("-inf")
            self.agent.changed.set()

    async def close(self, stop_instance: bool) -> None:
        for task in (self.warm_task, self.recheck):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.watch.stop()
        if stop_instance:
            await self.runtime.stop()

    # ------------------------------------------------------------------ observe

    def _runners(self) -> list[Any]:
        iid = self.spec.instance_id
        return [r for r in self.agent.runners.values() if r.job.instance_id == iid]

    async def observe(self) -> Observation:
        now = time.monotonic()
        phase = self.health.phase
        if phase in ("stopped", "backoff"):
            return Observation(now=now, jitter=self.rng())
        exited = await self.runtime.poll()
        if exited is not None:
            exited += last_line(await self.runtime.log_tail())
        http_ok = self.http_ok = False
        if exited is None:
            try:
                async with asyncio.timeout(self.timing.probe_timeout_s):
                    self.stats = await self.client.system_stats()
                http_ok = self.http_ok = True
            except (ComfyUIError, TimeoutError):
                pass
        runners = self._runners()
        ended = self._track_jobs(runners)
        running = next((r.job.job_id for r in runners if r.started_sent), None)
        ready = phase == "ready"
        vram = ram = None
        if ready and not runners and self.health.check_due and http_ok:
            vram = comfyui_held_mb(self.stats) if self.policy.leak_vram_mb else None
            ram = await self.runtime.ram_mb() if self.policy.leak_ram_mb else None
        warmed, warm_error = self._warm_result()
        return Observation(
            now=now,
            exited=exited,
            http_ok=http_ok,
            busy=bool(runners),
            running_job=running,
            stalled_job=await self._stalled(runners) if ready and http_ok else None,
            ws_silent=ready and self._ws_silent(ended),
            jobs_ended=len(ended),
            vram_mb=vram,
            ram_mb=ram,
            warmed=warmed,
            warm_error=warm_error,
            jitter=self.rng(),
        )

    def _track_jobs(self, runners: list[Any]) -> list[tuple[Key, float | None]]:
        """Attempts that left the instance since the last tick, with when ComfyUI took each."""
        held = self.agent.state.jobs
        current = {(r.job.job_id, r.job.attempt) for r in runners}
        for key in current:
            if self.jobs.get(key) is None:
                entry = held.get(key)
                self.jobs[key] = entry.started_at if entry is not None else None
        ended = [(k, t) for k, t in self.jobs.items() if k not in current]
        for key, _ in ended:
            del self.jobs[key]
        return ended

    def _ws_silent(self, ended: list[tuple[Key, float | None]]) -> bool:
        end = time.time()
        return any(t is not None and self.watch.silent_through(t, end) for _, t in ended)

    async def _stalled(self, runners: list[Any]) -> str | None:
        now = time.monotonic()
        quiet = [
            r for r in runners if r.started_sent and now - r.last_event_at >= self.policy.stall_s
        ]
        if not quiet:
            return None
        try:
            async with asyncio.timeout(self.timing.probe_timeout_s):
                running = set(parse_queue(await self.client.queue_raw()).running)
        except (ComfyUIError, TimeoutError):
            return None
        return next((r.job.job_id for r in quiet if r.prompt_id in running), None)

    def _warm_result(self) -> tuple[bool | None, str]:
        """The finished warm-up's verdict (None while none finished) and its error."""
        task = self.warm_task
        if task is None or not task.done():
            return None, ""
        self.warm_task = None
        if task.cancelled():
            return False, "warm-up cancelled"
        exc = task.exception()
        result = f"warm-up failed: {exc!r}" if exc is not None else task.result()
        return result == "ok", "" if result == "ok" else result

    # ------------------------------------------------------------------ act

    async def act(self, action: Action, obs: Observation) -> None:
        self.log.info(
            "instance_action", action=action.kind, reason=action.reason, detail=action.detail
        )
        if action.kind == "start":
            if action.reason:  # a start after a failed one: a restart, with its reason
                self._record(action.reason, action.detail, None)
            await self.runtime.start()
        elif action.kind == "restart":
            await self.catch_jobs(action.reason, action.detail, action.culprit)
            self._record(action.reason, action.detail, action.culprit)
            await self.runtime.stop(hard=action.reason in BREAKING)
            await self.runtime.start()
        elif action.kind == "kill":
            await self.catch_jobs(action.reason, action.detail, None)
            await self.runtime.stop(hard=True)
        elif action.kind == "warm_up":
            self.warm_task = asyncio.create_task(self._warm_up(), name="comfyui-warm-up")
        elif action.kind == "free":
            with contextlib.suppress(ComfyUIError, TimeoutError):
                async with asyncio.timeout(self.timing.probe_timeout_s):
                    await self.client.free_memory()

    async def catch_jobs(self, reason: str, detail: str, culprit: str | None) -> None:
        """Tell every job on the instance how to report its attempt once the prompt is lost."""
        runners = [r for r in self._runners() if getattr(r, "caught", None) is None]
        if not runners:
            return
        tail = await self.runtime.log_tail() if culprit is not None else ""
        for r in runners:
            blamed = r.job.job_id == culprit
            breaks = self.breaks.add(r.job.job_id) if blamed else 0
            r.caught = caught.terms(
                self.spec.instance_id,
                reason,
                detail,
                blamed=blamed,
                breaks=breaks,
                breaks_to_fail=self.policy.breaks_to_fail,
                log_tail=tail,
            )
            self.log.warning(
                "job_caught_in_restart",
                job_id=r.job.job_id,
                reason=reason,
                blamed=blamed,
                breaks=breaks,
                outcome=r.caught.outcome,
            )

    def _record(self, reason: str, detail: str, job_id: str | None) -> None:
        event = self.restarts.add(time.time(), reason, detail, job_id)
        self.log.warning(
            "comfyui_restarted", reason=reason, detail=detail, job_id=job_id, at=event.at
        )

    async def _warm_up(self) -> str:
        """Re-read the inventory and run the warm-up workflow; "ok" or why not."""
        try:
            await read_inventory(self.client)
        except ComfyUIError as exc:
            return f"inventory unreadable: {exc}"
        if not await self.watch.connect_now(self.timing.probe_timeout_s):  # before any job
            self.log.warning("ws_watch_not_connected", url=self.watch.url)
        if self.warmup is None:
            return "ok"
        prompt_id = f"cf-warmup-{uuid.uuid4().hex[:12]}"
        outcome = await run_prompt(
            self.client,
            None,
            self.warmup,
            prompt_id,
            f"comfyfleet-warmup-{self.agent.config.agent_id}",
            on_update=lambda _u: None,
            cancel=asyncio.Event(),
            timeout_s=self.policy.start_timeout_s,
            stall_s=2.0,
        )
        if outcome.status != "succeeded":
            return f"warm-up workflow {outcome.status}: {outcome.reason or outcome.error}"
        return "ok"

    # ------------------------------------------------------------------ publish

    def publish(self) -> None:
        inst = self.agent.instances.get(self.spec.instance_id)
        if inst is None:
            return
        h = self.health
        up_since = None
        if h.up_since is not None:
            up_since = time.time() - (time.monotonic() - h.up_since)
        inst.status = {
            "kind": self.spec.kind,
            "state": h.state,
            "up_since": up_since,
            **self.restarts.fields(),
        }
        inst.gate = self.gate
        if not h.accepting and inst.healthy:
            inst.healthy, inst.error = False, self.gate()
            self.agent.changed.set()

    def gate(self) -> str | None:
        """None while the instance may take jobs, else why not."""
        h = self.health
        if h.accepting:
            return None
        why = f"; last restart: {h.last_reason} ({h.last_detail})" if h.last_reason else ""
        return f"ComfyUI {h.state}{why}"[:500]

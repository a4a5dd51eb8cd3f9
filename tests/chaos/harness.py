"""Chaos run: a real fleet on 127.0.0.1, a stream of jobs, and faults injected at random.

Faults: SIGKILL an agent (restarted with the same id and data dir), SIGSTOP an agent for a while
(long enough, often, for the coordinator to declare it lost) then SIGCONT, SIGKILL a ComfyUI
simulator (restarted on the same port), SIGKILL the coordinator (restarted on the same data dir).
Afterwards every process is brought back, the run waits for every accepted job to end, gathers
the evidence and hands it to the pure checker (tests/chaos/checker.py).

With `coordinators > 1` (`store="postgres"`, a throwaway PostgreSQL cluster) the coordinators
share one store and one output directory, agents and the client know them all, and each
coordinator fault hits the leader: SIGKILL (restarted later as a follower), SIGSTOP past its lease
then SIGCONT, or pg_terminate_backend on its database connections. Instead of SQLite's
integrity check the run checks the fencing: no move of an epoch after the next epoch began.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.chaos.checker import JobEvidence, Verdict, check_run
from tests.helpers import postgres
from tests.helpers.fleet import Fleet, txt2img
from tests.helpers.multi import (
    FAST,
    MultiFleet,
    fencing_violations,
    terminate_backends_of,
    terms,
)

SIZES = [(64, 64), (96, 64), (64, 96), (128, 64), (80, 80), (64, 128)]
FAULTS = ("agent_kill", "agent_stop", "sim_kill", "coordinator_kill")
LEADER_FAULTS = ("coordinator_kill", "leader_stop", "leader_db_kill")
AGENT_DEATH_REASONS = (" lost (silent ", "agent restarted without this job")
OPEN = "SUBMITTED,QUEUED,ASSIGNED,RUNNING"


@dataclass(frozen=True)
class ChaosConfig:
    seed: int = 1
    jobs: int = 60
    agents: int = 3
    duration_s: float = 30.0  # submissions and faults are spread over this window
    fault_gap_s: tuple[float, float] = (1.5, 4.0)
    coordinator_kills: int = 2
    stop_s: tuple[float, float] = (1.0, 9.0)  # SIGSTOP length; > ~6.5 s makes the agent lost
    down_s: tuple[float, float] = (0.3, 2.5)  # how long a killed process stays dead
    settle_s: float = 180.0  # after the faults: time for every job to end
    step_ms: int = 3000  # per step at 512x512; scales with pixels (64x64: ~47 ms)
    steps: tuple[int, int] = (4, 14)
    # jobs are submitted with the default max_retries: a run must not hide retry-burning bugs
    coordinators: int = 1  # more than one needs store="postgres"
    store: str = "sqlite"  # or "postgres": a throwaway cluster, every coordinator on it
    leader_stop_s: tuple[float, float] = (3.0, 6.0)  # SIGSTOP of the leader; its lease is 2 s


@dataclass
class Figures:
    config: ChaosConfig
    verdict: Verdict
    faults: Counter[str] = field(default_factory=Counter)
    submit_retries: int = 0
    max_requeue_s: float | None = None
    requeues_after_death: int = 0
    integrity: str = "not checked"
    wall_s: float = 0.0
    settle_wait_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.verdict.violations and self.integrity == "ok"

    def report(self) -> str:
        v = self.verdict
        c = self.config
        req = "n/a" if self.max_requeue_s is None else f"{self.max_requeue_s:.2f} s"
        lines = [
            f"chaos seed={c.seed} agents={c.agents} coordinators={c.coordinators} "
            f"store={c.store} window={c.duration_s:g}s wall={self.wall_s:.0f}s",
            f"jobs accepted (201): {v.accepted}   by status: {dict(sorted(v.by_status.items()))}",
            f"faults injected: {sum(self.faults.values())}   {dict(sorted(self.faults.items()))}",
            f"lost: {v.lost}   duplicated: {v.duplicated}   ended other than asked: "
            f"{v.unexpected}   violations: {len(v.violations)}   retries spent: {v.retries_used}",
            f"max time to requeue after an agent death: {req} "
            f"(over {self.requeues_after_death} requeues)",
            f"submit retries (coordinator down/overloaded): {self.submit_retries}",
            f"settle after faults: {self.settle_wait_s:.1f} s   integrity: {self.integrity}",
        ]
        lines += [f"  VIOLATION {x}" for x in v.violations[:40]]
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, cfg: ChaosConfig, workdir: Path) -> None:
        if cfg.coordinators > 1 and cfg.store != "postgres":
            raise ValueError("several coordinators need store='postgres'")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.cluster: postgres.Cluster | None = None
        self.multi: MultiFleet | None = None
        self.store_url = ""
        args = ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--assign-timeout", "10"]
        if cfg.store == "postgres":
            self.cluster = postgres.start_cluster()
            self.store_url = self.cluster.url(self.cluster.new_database())
            self.multi = MultiFleet(workdir, self.store_url, cfg.coordinators, [*FAST, *args[4:]])
            self.fleet: Fleet = self.multi
            self.urls = list(self.multi.urls)
            self.outputs = self.multi.outputs
        else:
            self.fleet = Fleet(workdir, args)
            self.urls = [self.fleet.url]
            self.outputs = workdir / "coord" / "outputs"
        self.turn = 0
        self.names = [f"a{i}" for i in range(cfg.agents)]
        self.sim_ports: dict[str, int] = {}
        self.busy: set[str] = set()  # processes in the middle of a fault
        self.coord_lock = asyncio.Lock()
        self.faults: Counter[str] = Counter()
        self.deaths: list[tuple[str, float]] = []  # (agent id, when it stopped answering)
        self.accepted: dict[str, tuple[str, tuple[int, int]]] = {}  # key -> (job id, size)
        self.submit_retries = 0
        self.background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ processes

    def _add_sim(self, name: str) -> None:
        url = self.fleet.add_sim(
            name,
            24576,
            "--step-ms",
            str(self.cfg.step_ms),
            "--seed",
            str(self.rng.randrange(1 << 30)),
            port=self.sim_ports.get(name),
        )
        self.sim_ports[name] = int(url.rsplit(":", 1)[1])

    async def start(self) -> None:
        await asyncio.to_thread(self.fleet.start_coordinator)
        for name in self.names:
            await asyncio.to_thread(self._add_sim, name)
            self.fleet.add_agent(name, name)

    async def _restart_later(self, key: str, delay: float, restart: Any) -> None:
        try:
            await asyncio.sleep(delay)
            await asyncio.to_thread(restart)
        finally:
            self.busy.discard(key)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def url(self) -> str:
        """The next coordinator, round-robin (the client knows them all)."""
        self.turn += 1
        return self.urls[self.turn % len(self.urls)]

    async def inject_leader(self, kind: str) -> bool:
        """A fault of the leader of several coordinators."""
        multi, rng, cfg = self.multi, self.rng, self.cfg
        assert multi is not None and self.cluster is not None
        if "coordinator" in self.busy:
            return False
        try:
            leader = await asyncio.to_thread(multi.leader, 15.0)
        except AssertionError:
            return False  # an election is under way: not now
        proc = multi.coords[leader]
        if kind == "coordinator_kill":
            self.busy.add("coordinator")
            proc.kill(signal.SIGKILL)
            restart = lambda: multi.start_coordinator(leader)  # noqa: E731
            self._spawn(self._restart_later("coordinator", rng.uniform(*cfg.down_s), restart))
        elif kind == "leader_stop":
            self.busy.add("coordinator")
            proc.signal(signal.SIGSTOP)
            resume = lambda: proc.signal(signal.SIGCONT)  # noqa: E731
            self._spawn(self._restart_later("coordinator", rng.uniform(*cfg.leader_stop_s), resume))
        else:
            if proc.proc is None:
                return False
            await asyncio.to_thread(terminate_backends_of, self.cluster, proc.proc.pid)
        self.faults[kind] += 1
        return True

    async def inject(self, kind: str) -> bool:
        rng, cfg = self.rng, self.cfg
        if kind == "coordinator_kill" and self.multi is not None:
            return await self.inject_leader(self.rng.choice(LEADER_FAULTS))
        if kind == "coordinator_kill":
            if "coordinator" in self.busy:
                return False
            self.busy.add("coordinator")
            self.fleet.coord.kill(signal.SIGKILL)
            self._spawn(
                self._restart_later(
                    "coordinator", rng.uniform(*cfg.down_s), self.fleet.start_coordinator
                )
            )
        else:
            name = rng.choice(self.names)
            key = f"{kind.split('_')[0]}-{name}"
            if key in self.busy or (kind == "agent_stop" and f"agent-{name}" in self.busy):
                return False
            self.busy.add(key)
            if kind == "agent_kill":
                self.fleet.agents[name].kill(signal.SIGKILL)
                self.deaths.append((name, time.time()))
                self._spawn(
                    self._restart_later(
                        key, rng.uniform(*cfg.down_s), lambda n=name: self.fleet.add_agent(n, n)
                    )
                )
            elif kind == "agent_stop":
                self.fleet.agents[name].signal(signal.SIGSTOP)
                self.deaths.append((name, time.time()))
                self._spawn(
                    self._restart_later(
                        key,
                        rng.uniform(*cfg.stop_s),
                        lambda n=name: self.fleet.agents[n].signal(signal.SIGCONT),
                    )
                )
            else:
                self.fleet.sims[name].kill(signal.SIGKILL)
                self._spawn(
                    self._restart_later(
                        key, rng.uniform(*cfg.down_s), lambda n=name: self._add_sim(n)
                    )
                )
        self.faults[kind] += 1
        return True

    async def fault_loop(self) -> None:
        cfg = self.cfg
        start = time.monotonic()
        coord_at = sorted(
            self.rng.uniform(0.15, 0.85) * cfg.duration_s for _ in range(cfg.coordinator_kills)
        )
        while (elapsed := time.monotonic() - start) < cfg.duration_s:
            if coord_at and elapsed >= coord_at[0]:
                if await self.inject("coordinator_kill"):
                    coord_at.pop(0)
            else:
                await self.inject(self.rng.choice(FAULTS[:3]))
            await asyncio.sleep(self.rng.uniform(*cfg.fault_gap_s))

    # ------------------------------------------------------------------ client side

    async def _post_job(
        self, s: aiohttp.ClientSession, key: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        while True:
            try:
                async with s.post(
                    f"{self.url()}/v1/jobs",
                    json=body,
                    headers={"Idempotency-Key": key},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as r:
                    if r.status in (429, 503):
                        self.submit_retries += 1
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")) / 5)
                        continue
                    return r.status, await r.json()
            except (aiohttp.ClientError, TimeoutError):
                self.submit_retries += 1
                await asyncio.sleep(0.2)

    def _body(self, i: int) -> tuple[dict[str, Any], tuple[int, int]]:
        size = self.rng.choice(SIZES)
        steps = self.rng.randint(*self.cfg.steps)
        wf = txt2img(size[0], size[1], steps=steps, prefix=f"chaos{self.cfg.seed}_{i}")
        return {"workflow": wf}, size

    async def submit_loop(self, s: aiohttp.ClientSession) -> None:
        gap = self.cfg.duration_s / max(1, self.cfg.jobs)
        for i in range(self.cfg.jobs):
            key = f"chaos-{self.cfg.seed}-{i}"
            body, size = self._body(i)
            status, data = await self._post_job(s, key, body)
            if status not in (200, 201):
                raise AssertionError(f"valid job refused with {status}: {data}")
            self.accepted[key] = (data["id"], size)
            await asyncio.sleep(gap)

    async def _get(self, s: aiohttp.ClientSession, path: str) -> tuple[int, bytes]:
        for _ in range(100):
            try:
                async with s.get(
                    f"{self.url()}{path}", timeout=aiohttp.ClientTimeout(total=20)
                ) as r:
                    return r.status, await r.read()
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.3)
        raise RuntimeError(f"coordinator does not answer GET {path}")

    async def settle(self, s: aiohttp.ClientSession) -> float:
        """Restore every process, then wait until no accepted job is still open."""
        while self.background:
            await asyncio.gather(*list(self.background), return_exceptions=True)
        if self.multi is not None:
            for proc in self.multi.coords:
                proc.signal(signal.SIGCONT)
            await asyncio.to_thread(self.multi.start_coordinator)
        for name in self.names:
            agent = self.fleet.agents[name]
            agent.signal(signal.SIGCONT)
            if not agent.alive:
                self.fleet.add_agent(name, name)
            if not self.fleet.sims[name].alive:
                await asyncio.to_thread(self._add_sim, name)
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.cfg.settle_s:
            status, raw = await self._get(s, f"/v1/jobs?status={OPEN}&limit=1")
            if status == 200 and not json.loads(raw)["jobs"]:
                break
            await asyncio.sleep(0.5)
        return time.monotonic() - t0

    async def replays(self, s: aiohttp.ClientSession) -> list[tuple[str, str]]:
        """Every key submitted again: the coordinator must answer with the same job."""
        out = []
        for i, (key, (job_id, _)) in enumerate(sorted(self.accepted.items())):
            body = {"workflow": txt2img(8, 8, prefix="replay"), "max_retries": i % 3}
            _, data = await self._post_job(s, key, body)
            out.append((job_id, data.get("id", "?")))
        return out

    async def evidence(self, s: aiohttp.ClientSession) -> dict[str, JobEvidence]:
        out: dict[str, JobEvidence] = {}
        root = self.outputs
        for job_id, size in self.accepted.values():
            status, raw = await self._get(s, f"/v1/jobs/{job_id}")
            job = json.loads(raw) if status == 200 else None
            ev = JobEvidence(job, size)
            if job is not None and job["status"] == "COMPLETED":
                for o in job["outputs"]:
                    st, data = await self._get(s, o["url"])
                    if st == 200:
                        ev.downloads[o["name"]] = data
            jdir = root / job_id
            if jdir.is_dir():
                for adir in jdir.iterdir():
                    ev.attempt_dirs[int(adir.name)] = {f.name for f in adir.iterdir()}
            out[job_id] = ev
        return out

    def requeue_times(self, evidence: dict[str, JobEvidence]) -> list[float]:
        times = []
        for ev in evidence.values():
            for e in (ev.job or {}).get("history", []):
                # only requeues caused by the agent's death (not a ComfyUI crash or a timeout)
                if e["event"] != "requeue" or not any(
                    mark in e["reason"] for mark in AGENT_DEATH_REASONS
                ):
                    continue
                before = [t for a, t in self.deaths if a == e["agent_id"] and t <= e["at"]]
                if before and e["at"] - max(before) < 120:
                    times.append(e["at"] - max(before))
        return times

    async def run(self) -> Figures:
        try:
            return await self._run()
        finally:
            if self.cluster is not None:
                self.cluster.stop()

    async def _run(self) -> Figures:
        t0 = time.monotonic()
        try:
            await self.start()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
                await asyncio.gather(self.submit_loop(s), self.fault_loop())
                settle = await self.settle(s)
                replays = await self.replays(s)
                evidence = await self.evidence(s)
        finally:
            self.fleet.stop()
        verdict = check_run(evidence, replays)
        times = self.requeue_times(evidence)
        integrity = self.integrity(evidence)
        return Figures(
            self.cfg,
            verdict,
            self.faults,
            self.submit_retries,
            max(times) if times else None,
            len(times),
            integrity,
            time.monotonic() - t0,
            settle,
        )

    def integrity(self, evidence: dict[str, JobEvidence]) -> str:
        """SQLite: PRAGMA integrity_check. PostgreSQL: the fencing of the leaders' epochs."""
        if self.cluster is None:
            conn = sqlite3.connect(self.fleet.tmp / "coord" / "coordinator.db")
            try:
                return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
            finally:
                conn.close()
        histories = {j: (ev.job or {}).get("history", []) for j, ev in evidence.items()}
        began = {e: at for e, _, _, at in terms(self.store_url)}
        wrong = fencing_violations(histories, began)
        return "ok" if not wrong else f"{len(wrong)} fencing violations: {wrong[:5]}"


async def run_chaos(cfg: ChaosConfig, workdir: Path) -> Figures:
    return await ChaosRun(cfg, workdir).run()

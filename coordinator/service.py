"""`Coordinator`: one handle on the coordinator's parts for the HTTP layer and the tests.

The parts, by who may run them once several coordinators share one store:

- any coordinator: `intake.Intake` (submit, cancel, drain, reads);
- the one that places jobs: `placement.Placer` (scheduler loop), `agent_link.AgentLink`
  (register, heartbeat, lease), `reports.Reports` (fenced attempt reports, uploads, finish),
  `sweeper.Sweeper` (timeouts, lost agents), `learning.Learning` (estimates, failure blocks),
  over its live memory `state.Live`.

Every job change goes through `ledger.Ledger.apply`: pure move, guarded store write, then memory.
This class holds no logic of its own; it builds the parts and forwards to them.

With one coordinator (SQLite, memory) the parts are built once and lead for the process's life.
With several on one shared store (PostgreSQL) the parts are rebuilt at each change of role
(`leader.Leadership`): `lead(store, epoch)` starts a term with fresh memory, a store view fenced by
the epoch and recovery; `follow(store)` answers clients as a follower (`follower.FollowerIntake`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from comfyfleet.coordinator.agent_link import AgentLink
from comfyfleet.coordinator.blocking import FailureBook
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.estimates import Estimate
from comfyfleet.coordinator.events import EventBus
from comfyfleet.coordinator.feed import Feed
from comfyfleet.coordinator.fleet import AgentState, AgentStatus
from comfyfleet.coordinator.follower import FollowerIntake
from comfyfleet.coordinator.inline_outputs import InlineOutputs
from comfyfleet.coordinator.intake import Intake
from comfyfleet.coordinator.learning import Learning
from comfyfleet.coordinator.ledger import Ledger
from comfyfleet.coordinator.metrics import Metrics
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.object_outputs import ObjectOutputs
from comfyfleet.coordinator.orders import Orders
from comfyfleet.coordinator.output_store import LocalOutputs
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.parts import Parts
from comfyfleet.coordinator.placement import Placer
from comfyfleet.coordinator.recovery import job_dirs, recover, sweep_job_dir
from comfyfleet.coordinator.report_batch import Refusal, ReportWriter
from comfyfleet.coordinator.reports import Reports
from comfyfleet.coordinator.retention import Retention
from comfyfleet.coordinator.scheduler.model import JobRequest
from comfyfleet.coordinator.state import Live, LiveProgress
from comfyfleet.coordinator.store import Store
from comfyfleet.coordinator.store.base import SharedStore
from comfyfleet.coordinator.sweeper import Sweeper
from comfyfleet.coordinator.tenants import Tenants
from comfyfleet.coordinator.webhooks.outbox import Outbox
from comfyfleet.shared import protocol as p

__all__ = ["Coordinator", "LiveProgress"]


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        store: Store,
        outputs: OutputFiles,
        clock: Callable[[], float] = time.time,
        bus: EventBus | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.bus = bus or EventBus(start_id=int(clock() * 1_000_000))
        self.metrics = metrics or Metrics()
        self.feed = Feed(self.bus, self.metrics)
        self.leading = True
        self._build(store, outputs, None)
        self.metrics.watch(self)

    def _build(self, store: Store, outputs: OutputFiles, epoch: int | None) -> None:
        """Fresh parts over `store`: this coordinator's memory starts empty."""
        config, clock = self.config, self.clock
        self.store = store
        self.outputs = outputs
        self.live = Live(config, self.feed, clock)
        self.learning = Learning(config, self.live.counters, self.emit)
        self.tenants = Tenants(store)
        self.outbox = Outbox(config, store, self.tenants, self.metrics, clock)
        self.ledger = Ledger(store, self.live, outputs, self.outbox, epoch)
        shared = store if isinstance(store, SharedStore) else None
        parts = Parts(
            config,
            store,
            outputs,
            self.live,
            self.ledger,
            self.learning,
            self.metrics,
            clock,
            self.tenants,
            shared,
        )
        self.intake = Intake(parts) if self.leading else FollowerIntake(parts)
        self.agent_link = AgentLink(parts)
        self.reports = Reports(parts)
        self.inline_outputs = InlineOutputs(self.reports, config.inline_output_limit)
        self.report_writer = ReportWriter(self.reports, self.inline_outputs)
        self.placer = Placer(parts)
        self.sweeper = Sweeper(parts)
        self.orders = Orders(parts, self.intake)
        kept = outputs if isinstance(outputs, ObjectOutputs) else LocalOutputs(outputs.root)
        self.retention = Retention(parts, kept)
        # client calls (any coordinator)
        self.submit = self.intake.submit
        self.get = self.intake.get
        self.list_jobs = self.intake.list_jobs
        self.cancel = self.intake.cancel
        self.drain = self.intake.drain
        self.agent = self.live.agent
        # output uploads (fenced like every agent report)
        self.open_upload = self.reports.open_upload
        self.fenced_after_write = self.reports.fenced_after_write
        self.upload_state = self.reports.upload_state
        # the placing coordinator's loops
        self.schedule_once = self.placer.schedule_once
        self.scheduler_loop = self.placer.scheduler_loop
        self.sweep = self.sweeper.sweep
        self.sweeper_loop = self.sweeper.sweeper_loop

    def lead(self, store: SharedStore, epoch: int) -> None:
        """Begin a leader's term: fresh memory over `store` (fenced by `epoch`), then recovery."""
        self._let_go()
        self.leading = True
        self._build(store, self._fresh_outputs(), epoch)
        recover(self.live, self.ledger, self.learning, self.store, sweep=False)

    def follow(self, store: SharedStore) -> None:
        """Serve clients as a follower (its view of the fleet: `refresh`)."""
        self._let_go()
        self.leading = False
        self._build(store, self._fresh_outputs(), None)

    def refresh(self) -> None:
        """A follower's view of the fleet, read again from the store."""
        if isinstance(self.intake, FollowerIntake):
            self.intake.refresh()

    def _fresh_outputs(self) -> OutputFiles:
        # A local directory's caches may be stale once another coordinator has written to it.
        if type(self.outputs) is OutputFiles:
            return OutputFiles(self.outputs.root, self.outputs.max_bytes)
        return self.outputs

    def _let_go(self) -> None:
        """End this memory's part: jobs not yet handed out stay with the store, and the agents'
        long-polls on it end now (LOST here only ends them: this memory is dropped)."""
        for agent in self.live.agents.values():
            agent.to_deliver.clear()
            agent.to_cancel.clear()
            agent.status = AgentStatus.LOST
            agent.wake.set()

    def recover(self) -> None:
        recover(self.live, self.ledger, self.learning, self.store)

    async def sweep_attempt_files(self, batch: int = 100) -> int:
        """The sweep of recovery, after it: a few folders at a time between other work (a
        shared output directory holds every job's folder; the next leader must not wait)."""
        live, store, outputs = self.live, self.store, self.outputs
        folders = await asyncio.to_thread(job_dirs, outputs)
        removed = 0
        for k, folder in enumerate(folders, 1):
            if folder.exists():
                removed += sweep_job_dir(folder, live, store, outputs)
            if k % batch == 0:
                await asyncio.sleep(0)
        return removed

    def emit(self, kind: str, data: dict[str, Any], job_id: str | None = None) -> None:
        """Publish a fleet event (e.g. `workflow_blocked`) to the live streams."""
        self.bus.publish(kind, data, job_id)

    # The agent protocol, as unbound methods for api/agent_routes.py's table.
    def register(self, msg: p.Register, host_proven: bool = False) -> p.RegisterReply:
        return self.agent_link.register(msg, host_proven)

    def heartbeat(self, msg: p.Heartbeat, host_proven: bool = False) -> p.HeartbeatReply:
        return self.agent_link.heartbeat(msg, host_proven)

    async def lease(self, msg: p.LeaseRequest) -> p.LeaseReply:
        return await self.agent_link.lease(msg)

    def started(self, msg: p.Started) -> p.Ack:
        return self.reports.started(msg)

    def events(self, msg: p.Events) -> p.Ack:
        return self.reports.events(msg)

    def finish(self, msg: p.Finish) -> p.Ack:
        return self.reports.finish(msg)

    async def finish_report(self, msg: p.Finish) -> p.Ack:
        """POST finish: its inline outputs stored first, then `finish`."""
        return await self.inline_outputs.finish(msg)

    async def report_batch(self, msg: p.Reports, refusal: Refusal) -> p.ReportsReply:
        return await self.report_writer.submit(msg, refusal)

    # Read-only views of live memory (the API's views, metrics, tests).
    @property
    def jobs(self) -> dict[str, JobRecord]:
        return self.live.jobs

    @property
    def queued(self) -> dict[str, JobRequest]:
        return self.live.queued

    @property
    def agents(self) -> dict[str, AgentState]:
        return self.live.agents

    @property
    def progress(self) -> dict[str, LiveProgress]:
        return self.live.progress

    @property
    def counters(self) -> dict[str, int]:
        return self.live.counters

    @property
    def estimates(self) -> dict[tuple[str, str], Estimate]:
        return self.learning.estimates

    @property
    def blocks(self) -> FailureBook:
        return self.learning.blocks

"""The placing coordinator's scheduler loop: one pure plan over the queue, then its apply.

`schedule_once` builds the scheduler's input from live state, runs the pure `scheduler.plan`,
writes the placements through the ledger (guarded, one transaction) and only then remembers
the plan: the placements written, the pending reasons of the jobs left waiting. A plan the store
refuses leaves memory as it was, and the next one starts over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.blocking import apply_blocks
from comfyfleet.coordinator.fleet import AgentStatus, agent_view, has_free_slot
from comfyfleet.coordinator.ledger import Change, survive_store_faults
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.pacing import any_starving, plan_call
from comfyfleet.coordinator.parts import Part
from comfyfleet.coordinator.scheduler.model import Placement
from comfyfleet.coordinator.scheduler.plan import plan

MAX_PLACEMENTS_PER_PLAN = 2000
RECENT_FAILURE_WINDOW_S = 600.0
PLAN_REST_MAX_S = 0.1


class Placer(Part):
    def schedule_once(self) -> int:
        """Run one placement plan over the queue; returns how many jobs were placed."""
        live = self.live
        if not live.queued:
            return 0
        now = self.clock()
        agents = [a for a in live.agents.values() if a.status != AgentStatus.LOST]
        free = [a for a in agents if has_free_slot(a, live.jobs)]
        free_views = [agent_view(a, live.jobs, RECENT_FAILURE_WINDOW_S, now) for a in free]
        call = plan_call(free_views, live.unexplained, live.explained_at, now)
        if not call.run:
            return 0
        queue = (
            live.queue_in_order()
            if call.only is None
            else [live.queued[i] for i in call.only if i in live.queued]
        )
        # Placing alone needs only the agents with room; reasons, and the holds of starving
        # jobs (which may fall on a busy GPU), need the whole fleet.
        views = (
            free_views
            if call.explain == frozenset() and not any_starving(queue, now)
            else [agent_view(a, live.jobs, RECENT_FAILURE_WINDOW_S, now) for a in agents]
        )
        queue = apply_blocks(queue, self.learning.blocks.blocked(now))
        with self.metrics.schedule_seconds.time():
            result = plan(
                queue,
                views,
                now,
                max_placements=MAX_PLACEMENTS_PER_PLAN,
                affinity_bucket_mb=self.config.affinity_bucket_mb,
                explain=call.explain,
            )
        changes = []
        for pl in result.placements:
            job = live.jobs[pl.job_id]
            new = moves.assigned(job, now, pl.agent_id, pl.instance_id, pl.gpu_index)
            changes.append(Change(job, new, self._to_deliver(pl)))
        placed = sum(self.ledger.apply(changes, strict=False))
        # The plan is written: now remember what it explained.
        if call.explain is None:
            live.explained_at = now
            live.unexplained.clear()
        else:
            live.unexplained -= call.explain
        for job_id, reason in result.pending.items():
            waiting = live.jobs.get(job_id)
            if waiting is not None:
                waiting.pending_reason = reason
        live.counters["placements"] += placed
        if len(result.placements) >= MAX_PLACEMENTS_PER_PLAN:
            live.wake.set()
        return placed

    def _to_deliver(self, pl: Placement) -> Callable[[JobRecord], None]:
        """After a placement is written: count it, queue the job for its agent's next lease."""

        def deliver(new: JobRecord) -> None:
            self.live.counters["placements_warm"] += pl.warm
            agent = self.live.agents[new.agent_id or ""]
            agent.to_deliver.append(new.id)
            agent.wake.set()

        return deliver

    async def scheduler_loop(self) -> None:
        wake = self.live.wake
        while True:
            await wake.wait()
            wake.clear()
            started = time.perf_counter()
            if not await survive_store_faults(self.schedule_once):
                wake.set()  # the store refused: try again after STORE_RETRY_S
            # Rest as long as the plan took (at most PLAN_REST_MAX_S): on a big fleet the wakes
            # of that time are served by one plan and requests get half the loop at least; on
            # an idle fleet a plan takes well under a millisecond, so dispatch stays immediate.
            await asyncio.sleep(min(time.perf_counter() - started, PLAN_REST_MAX_S))

"""Loading the placing coordinator's memory from the store after a (re)start."""

from __future__ import annotations

import structlog

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.fleet import AgentState, AgentStatus, register_from_info
from comfyfleet.coordinator.learning import Learning
from comfyfleet.coordinator.ledger import Ledger
from comfyfleet.coordinator.model import AgentRecord
from comfyfleet.coordinator.state import Live
from comfyfleet.coordinator.store import Store
from comfyfleet.shared.status import JobEvent, JobStatus

log = structlog.get_logger("coordinator")


def recover(live: Live, ledger: Ledger, learning: Learning, store: Store) -> None:
    """Load agents, active jobs and estimates; nothing is requeued before the reconnect grace
    (every known agent is RECONNECTING until then)."""
    now = live.clock()
    deadline = now + live.config.restart_grace_s
    for rec in store.load_agents():
        live.agents[rec.agent_id] = recovered_agent(rec, now, deadline)
    for job in store.non_terminal_jobs():
        if job.status == JobStatus.SUBMITTED:
            ledger.commit(job, moves.advance(job, JobEvent.ENQUEUE, now, "recovered after restart"))
            continue
        live.index(None, job)  # memory from what the store holds: nothing to write
        if job.desired != "run":
            live.cancel_sent[job.id] = now
    learning.learn_from_store(store)
    log.info("recovered", jobs=len(live.jobs), queued=len(live.queued), agents=len(live.agents))
    live.wake.set()


def recovered_agent(rec: AgentRecord, now: float, deadline: float) -> AgentState:
    """A stored agent as memory holds it until it registers again: RECONNECTING, lost unless
    it comes back before `deadline`, with the hardware and inventory of its last registration."""
    state = AgentState(
        rec.agent_id,
        AgentStatus.RECONNECTING,
        now,
        rec.registered_at,
        lost_deadline=deadline,
    )
    msg = register_from_info(rec.info)
    if msg is not None:
        state.apply_register(msg, rec.registered_at)
        state.status, state.lost_deadline, state.last_seen = (
            AgentStatus.RECONNECTING,
            deadline,
            now,
        )
    return state

"""Loading the placing coordinator's memory from the store after a (re)start."""

from __future__ import annotations

from pathlib import Path

import structlog

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.fleet import AgentState, AgentStatus, register_from_info
from comfyfleet.coordinator.learning import Learning
from comfyfleet.coordinator.ledger import Ledger
from comfyfleet.coordinator.model import AgentRecord
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.state import Live
from comfyfleet.coordinator.store import Store
from comfyfleet.shared.status import JobEvent, JobStatus

log = structlog.get_logger("coordinator")


def recover(
    live: Live, ledger: Ledger, learning: Learning, store: Store, sweep: bool = True
) -> None:
    """Load agents, active jobs and estimates; nothing is requeued before the reconnect grace
    (every known agent is RECONNECTING until then). `sweep=False` leaves the sweep of attempt
    files to the caller (a new leader sweeps a shared directory after it has begun placing)."""
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
        elif job.status == JobStatus.ASSIGNED:
            # Its lease reply may never have been sent: hand it out again (an agent that holds
            # it reports it at register and ignores the copy); its assign timeout starts now.
            live.awaiting_since[job.id] = now
            live.deliver_again(job)
        elif job.status == JobStatus.RUNNING:
            live.held[job.id] = now  # its agent said it started it, before the restart
    learning.learn_from_store(store)
    swept = sweep_attempt_files(live, store, ledger.outputs) if sweep else 0
    log.info(
        "recovered",
        jobs=len(live.jobs),
        queued=len(live.queued),
        agents=len(live.agents),
        attempt_folders_swept=swept,
    )
    live.wake.set()


def sweep_attempt_files(live: Live, store: Store, outputs: OutputFiles) -> int:
    """Remove the output folders of attempts no job needs any more: all of a FAILED or CANCELLED
    job's, and every attempt but its latest of any other job. A crash between the store write
    that ends an attempt and the removal of its files leaves such folders. Returns how many went.
    """
    return sum(sweep_job_dir(job_dir, live, store, outputs) for job_dir in job_dirs(outputs))


def job_dirs(outputs: OutputFiles) -> list[Path]:
    return [d for d in outputs.root.iterdir() if d.is_dir()] if outputs.root.is_dir() else []


def sweep_job_dir(job_dir: Path, live: Live, store: Store, outputs: OutputFiles) -> int:
    """`sweep_attempt_files` for one job's folder; how many attempt folders went."""
    removed = 0
    job = live.jobs.get(job_dir.name) or store.get_job(job_dir.name)
    if job is None:
        return 0  # not a job this store knows: not ours to judge
    keep = None if job.status in (JobStatus.FAILED, JobStatus.CANCELLED) else job.attempt
    for attempt_dir in list(job_dir.iterdir()):
        if attempt_dir.name.isdigit() and int(attempt_dir.name) != keep:
            outputs.drop_attempt(job.id, int(attempt_dir.name))
            removed += 1
    if keep is None and not any(job_dir.iterdir()):
        job_dir.rmdir()
    return removed


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

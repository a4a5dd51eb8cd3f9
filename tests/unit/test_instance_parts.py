"""The small parts around healing: terms of jobs caught in a restart (agent) and what the
coordinator does with them, the restart records, the ComfyUI log file."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.agent.supervise.caught import BreakBook, terms
from comfyfleet.agent.supervise.logfile import LogFile
from comfyfleet.agent.supervise.records import RestartLog
from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator import restarts
from comfyfleet.coordinator.blocking import classify
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared import protocol as p
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobEvent, JobStatus


def test_a_job_caught_in_a_restart_is_requeued_free_until_it_broke_an_instance_twice() -> None:
    first = terms("0", "exited", "killed by SIGKILL", blamed=True, breaks=1, breaks_to_fail=2)
    assert first.outcome == "requeue" and not first.spend_retry
    assert first.error.code == p.INSTANCE_RESTARTED and first.error.retryable
    second = terms(
        "0",
        "hung_prompt",
        "no event",
        blamed=True,
        breaks=2,
        breaks_to_fail=2,
        log_tail="a\nboom\n",
    )
    assert second.outcome == "failed" and second.error.code == p.INSTANCE_BROKEN
    assert "hung ComfyUI 2 times (hung_prompt: no event)" in second.error.message
    assert second.error.details["log_tail"] == "a\nboom\n"
    # a bystander (queued behind it) and a between-jobs restart never fail a job
    for reason, blamed in (("exited", False), ("leak_vram", True), ("ws_silent", True)):
        t = terms("0", reason, "x", blamed=blamed, breaks=5, breaks_to_fail=2)
        assert t.outcome == "requeue" and not t.spend_retry


def test_break_book_counts_per_job_and_forgets_the_oldest() -> None:
    book = BreakBook(limit=2)
    assert [book.add("a"), book.add("a"), book.add("b"), book.add("c")] == [1, 2, 1, 1]
    assert book.add("a") == 1  # forgotten: the two newest are b and c


def record(job_id: str = "j1", status: JobStatus = JobStatus.RUNNING) -> JobRecord:
    spec = JobSpec(workflow={"1": {"class_type": "KSampler", "inputs": {}}}, max_retries=2)
    job = JobRecord(id=job_id, spec=spec, workflow_hash="wf", created_at=1.0)
    job = moves.created(job, 1.0)
    job = moves.assigned(job, 2.0, "a1", "0", 0)
    if status == JobStatus.RUNNING:
        job = moves.advance(job, JobEvent.START, 3.0, "started")
    return job


def error_dict(e: p.ErrorInfo) -> dict[str, object]:
    return {"code": e.code, "message": e.message, "retryable": e.retryable, "details": e.details}


def test_the_coordinator_requeues_free_or_fails_with_the_reason() -> None:
    free = terms("0", "exited", "killed by SIGKILL", blamed=True, breaks=1, breaks_to_fail=2)
    err = error_dict(free.error)
    assert classify(err) == "transient"  # no blocking
    job = moves.released(record(), 4.0, free.error.message, spend_retry=False, error=err)
    assert job.status == JobStatus.QUEUED and job.retries_used == 0
    broke = terms("0", "exited", "killed by SIGKILL", blamed=True, breaks=2, breaks_to_fail=2)
    err = error_dict(broke.error)
    assert classify(err) == "agent"  # the (agent, shape) pair counts a failure
    job = moves.released(record(), 4.0, broke.error.message, spend_retry=True, error=err)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error["code"] == p.INSTANCE_BROKEN and job.retries_used == 0
    wanted_cancel = record()
    wanted_cancel.desired = "cancel"
    cancelled = moves.released(wanted_cancel, 4.0, "r", spend_retry=True, error=err)
    assert cancelled.status == JobStatus.CANCELLED  # a user's cancel still wins


def test_restart_log_counts_and_keeps_the_newest_in_order() -> None:
    log = RestartLog()
    for i in range(12):
        log.add(100.0, "exited" if i % 3 else "hung_http", f"#{i}", None)
    fields = log.fields()
    assert fields["restart_counts"] == {"hung_http": 4, "exited": 8}
    ats = [e.at for e in fields["restarts"]]
    assert len(ats) == 8 and ats == sorted(ats) and len(set(ats)) == 8
    assert fields["last_restart_reason"] == "exited" and fields["restarts"][-1].detail == "#11"


def inst(iid: str, *ats: float) -> p.InstanceInfo:
    return p.InstanceInfo(
        instance_id=iid, restarts=[p.RestartEvent(at=t, reason="exited") for t in ats]
    )


def test_restarts_are_published_once_and_not_on_first_sight() -> None:
    found, seen = restarts.fresh({}, [inst("0", 1.0, 2.0), inst("1")])
    assert found == []  # known before this coordinator saw the agent
    found, seen = restarts.fresh(seen, [inst("0", 1.0, 2.0, 3.0), inst("1", 2.5)])
    assert [(i, e.at) for i, e in found] == [("1", 2.5), ("0", 3.0)]
    found, seen = restarts.fresh(seen, [inst("0", 2.0, 3.0), inst("1", 2.5)])
    assert found == []


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=40),
    st.integers(1, 8),
)
def test_every_restart_after_first_sight_is_published_exactly_once(
    plan: list[tuple[int, bool]], window: int
) -> None:
    """Heartbeats carry the last `window` restarts; some heartbeats are lost (not applied).
    Published: never twice, never one from before first sight, and every one made after it
    that an applied heartbeat carried while at most `window` were made since the last one."""
    log = RestartLog()
    seen: dict[str, float] = {}
    published: list[float] = []
    t = 0.0
    applied_once = False
    unsent: list[float] = []  # made after first sight, not yet in an applied heartbeat
    overflow = False
    for new, lost in plan:
        for _ in range(new):
            t += 1.0
            event = log.add(t, "exited", "", None)
            if applied_once:
                unsent.append(event.at)
        if lost and applied_once:
            continue
        overflow = overflow or len(unsent) > window
        info = p.InstanceInfo(instance_id="0", restarts=list(log.recent)[-window:])
        found, seen = restarts.fresh(seen, [info])
        published.extend(e.at for _, e in found)
        if not overflow:
            assert sorted(e.at for _, e in found) == unsent
        unsent = []
        applied_once = True
    assert len(published) == len(set(published))
    assert published == sorted(published)


def test_log_file_rotates_and_the_tail_spans_the_rotation(tmp_path: Path) -> None:
    lf = LogFile(tmp_path / "c.log", max_bytes=100, backups=2)
    fd = lf.open_for_child()
    try:
        for i in range(30):
            os.write(fd, f"line {i}\n".encode())
            lf.rotate_if_needed()
    finally:
        os.close(fd)
    assert (tmp_path / "c.log.1").exists() and (tmp_path / "c.log.2").exists()
    assert not (tmp_path / "c.log.3").exists()
    assert (tmp_path / "c.log").stat().st_size <= 100
    tail = lf.tail(60)
    assert tail.rstrip().endswith("line 29") and not tail.startswith("ine")
    assert lf.tail(10_000).count("line 29") == 1
    assert LogFile(tmp_path / "none.log", 10, 1).tail() == ""

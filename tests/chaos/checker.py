"""Pure checks over the end state of a chaos run (no I/O): what DESIGN.md §6 promises.

Every function takes plain data (job JSON as the API serves it, output bytes, the attempt
directories found on disk) and returns a list of violations, each a sentence naming the job.
A valid job that nothing asked to fail or to be cancelled must COMPLETE: faults outside the
workflow (agents, ComfyUIs, the coordinator dying) are what retries and requeues are for, so a
FAILED or CANCELLED end is a violation, whatever the reason (retries_exhausted included).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.shared.errors import IllegalTransition
from comfyfleet.shared.status import JobEvent, JobStatus, transition

TERMINAL = {s.value for s in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def history_violations(
    job_id: str, history: list[Mapping[str, Any]], final_status: str
) -> list[str]:
    """Every move legal by the one transition table, chained, attempts fenced, one terminal."""
    out: list[str] = []
    if not history:
        return [f"{job_id}: empty history"]
    first = history[0]
    if first.get("from_status") is not None or first.get("to_status") != "SUBMITTED":
        out.append(f"{job_id}: history does not start with SUBMITTED: {first}")
    prev_status, prev_attempt, prev_at = "SUBMITTED", 0, float(first.get("at", 0))
    terminals = 0
    for i, entry in enumerate(history[1:], 1):
        src, dst, event = entry.get("from_status"), entry.get("to_status"), entry.get("event")
        if src != prev_status:
            out.append(f"{job_id}: step {i} starts from {src}, but the job was {prev_status}")
        try:
            legal = transition(JobStatus(src), JobEvent(event)).value == dst
        except (IllegalTransition, ValueError):
            legal = False
        if not legal:
            out.append(f"{job_id}: step {i} {src} --{event}--> {dst} is not in the table")
        attempt = entry.get("attempt")
        want = prev_attempt + 1 if event == JobEvent.ASSIGN.value else prev_attempt
        if attempt != want:
            out.append(f"{job_id}: step {i} ({event}) has attempt {attempt}, expected {want}")
        at = float(entry.get("at", 0))
        if at + 1e-6 < prev_at:
            out.append(f"{job_id}: step {i} goes back in time ({at} < {prev_at})")
        if dst in TERMINAL:
            terminals += 1
        prev_status, prev_attempt, prev_at = dst, attempt if isinstance(attempt, int) else 0, at
    if terminals > 1:
        out.append(f"{job_id}: reached a terminal state {terminals} times")
    if prev_status != final_status:
        out.append(f"{job_id}: status {final_status} but history ends in {prev_status}")
    completed = sum(1 for e in history if e.get("to_status") == "COMPLETED")
    if completed > 1:
        out.append(f"{job_id}: COMPLETED {completed} times")
    return out


@dataclass
class JobEvidence:
    """What the harness gathered about one accepted job."""

    job: Mapping[str, Any] | None  # the API's job JSON; None if the coordinator lost it
    want_size: tuple[int, int]
    want_outputs: int = 1
    downloads: dict[str, bytes] = field(default_factory=dict)  # output name -> bytes served
    attempt_dirs: dict[int, set[str]] = field(default_factory=dict)  # on disk: attempt -> files
    expect: str = "COMPLETED"  # FAILED / CANCELLED only for a job the run asked to end so


def unexpected_end(job_id: str, job: Mapping[str, Any], expect: str) -> str | None:
    """A violation when a job ended other than the run asked, naming why it ended."""
    status = job["status"]
    if status == expect:
        return None
    error = job.get("error") or {}
    why = f"{error.get('code', '?')}: {error.get('message', '')}" if error else "no error given"
    requeues = [h.get("reason", "") for h in job.get("history", []) if h.get("event") == "requeue"]
    return (
        f"{job_id}: ended {status}, expected {expect} ({why}; attempt {job.get('attempt')}, "
        f"retries used {job.get('retries_used')} of {job.get('max_retries')}; "
        f"requeued for: {'; '.join(requeues) or 'nothing'})"
    )


def job_violations(job_id: str, ev: JobEvidence) -> list[str]:
    job = ev.job
    if job is None:
        return [f"{job_id}: accepted (201) but unknown to the coordinator: LOST"]
    status = job["status"]
    out = history_violations(job_id, job.get("history", []), status)
    if status not in TERMINAL:
        out.append(f"{job_id}: never reached a terminal state (still {status})")
        return out
    ended = unexpected_end(job_id, job, ev.expect)
    if ended is not None:
        out.append(ended)
    stale = {
        a: names
        for a, names in ev.attempt_dirs.items()
        if a != job.get("attempt") or status != "COMPLETED"
    }
    stale = {a: n for a, n in stale.items() if n}
    if stale:
        out.append(
            f"{job_id}: files of attempts other than the completed one are stored: {sorted(stale)}"
        )
    if status != "COMPLETED":
        return out
    outputs = job.get("outputs", [])
    if len(outputs) != ev.want_outputs:
        out.append(f"{job_id}: {len(outputs)} outputs, expected {ev.want_outputs}")
    kept = ev.attempt_dirs.get(job["attempt"], set())
    for o in outputs:
        name = o["name"]
        data = ev.downloads.get(name)
        if data is None:
            out.append(f"{job_id}: output {name} could not be downloaded")
            continue
        if len(data) != o.get("size"):
            out.append(f"{job_id}: output {name} has {len(data)} bytes, manifest {o.get('size')}")
        if hashlib.sha256(data).hexdigest() != o.get("sha256"):
            out.append(f"{job_id}: output {name} does not match its sha256")
        size = png_size(data)
        if size != ev.want_size:
            out.append(f"{job_id}: output {name} is {size}, requested {ev.want_size}")
        if ev.attempt_dirs and name not in kept:
            out.append(f"{job_id}: output {name} is not among attempt {job['attempt']}'s files")
    return out


@dataclass
class Verdict:
    accepted: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0  # ended FAILED / CANCELLED (or COMPLETED) other than the run asked
    retries_used: int = 0  # retries spent over all jobs (requeues that charged one)
    violations: list[str] = field(default_factory=list)


def check_run(
    evidence: Mapping[str, JobEvidence], replays: Iterable[tuple[str, str]] = ()
) -> Verdict:
    """The whole run. `replays`: (first job id, id returned on a retried submit, same key)."""
    v = Verdict(accepted=len(evidence))
    for job_id, ev in sorted(evidence.items()):
        found = job_violations(job_id, ev)
        v.violations.extend(found)
        if ev.job is None or ev.job["status"] not in TERMINAL:
            v.lost += 1
        else:
            status = ev.job["status"]
            v.by_status[status] = v.by_status.get(status, 0) + 1
            v.unexpected += status != ev.expect
            v.retries_used += int(ev.job.get("retries_used") or 0)
        if any("times" in f and ("COMPLETED" in f or "terminal" in f) for f in found):
            v.duplicated += 1
    for first, again in replays:
        if first != again:
            v.duplicated += 1
            v.violations.append(f"one idempotency key gave two jobs: {first} and {again}")
    return v

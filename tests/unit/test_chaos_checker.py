"""The chaos checker catches what it must: illegal moves, double terminals, wrong outputs."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from comfyfleet.shared.status import TRANSITIONS, JobStatus
from tests.chaos.checker import JobEvidence, check_run, history_violations, job_violations, png_size

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")
    return buf.getvalue()


@st.composite
def legal_history(draw: st.DrawFn) -> list[dict[str, Any]]:
    hist: list[dict[str, Any]] = [
        dict(at=0.0, from_status=None, to_status="SUBMITTED", event="submit", attempt=0)
    ]
    status, attempt, at = JobStatus.SUBMITTED, 0, 0.0
    for _ in range(draw(st.integers(0, 30))):
        moves = [(e, dst) for (src, e), dst in TRANSITIONS.items() if src == status]
        if not moves:
            break
        event, dst = draw(st.sampled_from(sorted(moves)))
        attempt += event.value == "assign"
        at += draw(st.floats(0, 5))
        hist.append(
            dict(
                at=at,
                from_status=status.value,
                to_status=dst.value,
                event=event.value,
                attempt=attempt,
            )
        )
        status = dst
    return hist


@given(legal_history())
def test_every_legal_walk_passes(hist: list[dict[str, Any]]) -> None:
    assert history_violations("j", hist, hist[-1]["to_status"]) == []


@settings(max_examples=200)
@given(legal_history(), st.data())
def test_any_corrupted_step_is_caught(hist: list[dict[str, Any]], data: st.DataObject) -> None:
    if len(hist) < 2:
        return
    i = data.draw(st.integers(1, len(hist) - 1))
    bad = [dict(e) for e in hist]
    kind = data.draw(st.sampled_from(["to", "attempt", "event", "drop"]))
    if kind == "to":
        choices = [s.value for s in JobStatus if s.value != bad[i]["to_status"]]
        bad[i]["to_status"] = data.draw(st.sampled_from(choices))
    elif kind == "attempt":
        bad[i]["attempt"] += data.draw(st.sampled_from([-1, 1, 2]))
    elif kind == "event":
        bad[i]["event"] = data.draw(
            st.sampled_from(
                [
                    e
                    for e in ("assign", "start", "complete", "fail", "requeue", "cancel", "enqueue")
                    if e != bad[i]["event"]
                ]
            )
        )
    else:
        del bad[i]
    final = hist[-1]["to_status"]  # the job's status is where the true history led
    assert history_violations("j", bad, final), (kind, i, bad)


def completed_job(w: int = 64, h: int = 32, attempt: int = 1) -> tuple[dict[str, Any], bytes]:
    data = png(w, h)
    hist = [
        dict(at=0, from_status=None, to_status="SUBMITTED", event="submit", attempt=0),
        dict(at=0, from_status="SUBMITTED", to_status="QUEUED", event="enqueue", attempt=0),
    ]
    for a in range(1, attempt + 1):
        hist.append(
            dict(at=a, from_status="QUEUED", to_status="ASSIGNED", event="assign", attempt=a)
        )
        if a < attempt:
            hist.append(
                dict(at=a, from_status="ASSIGNED", to_status="QUEUED", event="requeue", attempt=a)
            )
    hist += [
        dict(at=9, from_status="ASSIGNED", to_status="RUNNING", event="start", attempt=attempt),
        dict(at=9, from_status="RUNNING", to_status="COMPLETED", event="complete", attempt=attempt),
    ]
    job = {
        "status": "COMPLETED",
        "attempt": attempt,
        "history": hist,
        "outputs": [
            {"name": "o.png", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        ],
    }
    return job, data


def test_a_good_completed_job_passes() -> None:
    job, data = completed_job(attempt=2)
    ev = JobEvidence(job, (64, 32), downloads={"o.png": data}, attempt_dirs={2: {"o.png"}})
    assert job_violations("j", ev) == []
    verdict = check_run({"j": ev})
    assert verdict.lost == 0 and verdict.by_status == {"COMPLETED": 1}


def test_wrong_bytes_size_and_stale_attempt_files_are_caught() -> None:
    job, data = completed_job(attempt=2)
    found = job_violations(
        "j",
        JobEvidence(
            job,
            (64, 32),
            downloads={"o.png": data + b"x"},
            attempt_dirs={1: {"o.png"}, 2: {"o.png"}},
        ),
    )
    text = " | ".join(found)
    assert "sha256" in text and "bytes" in text and "attempts other than" in text
    found = job_violations("j", JobEvidence(job, (128, 32), downloads={"o.png": data}))
    assert any("requested (128, 32)" in f for f in found)


def test_lost_unfinished_and_double_completion_are_counted() -> None:
    job, data = completed_job()
    twice = dict(job, history=[*job["history"], dict(job["history"][-1])])
    running = dict(job, status="RUNNING", history=job["history"][:-1])
    verdict = check_run(
        {
            "lost": JobEvidence(None, (64, 32)),
            "stuck": JobEvidence(running, (64, 32)),
            "twice": JobEvidence(twice, (64, 32), downloads={"o.png": data}),
        },
        replays=[("a", "a"), ("b", "c")],
    )
    assert verdict.lost == 2
    assert verdict.duplicated == 2
    assert any("LOST" in v for v in verdict.violations)
    assert any("COMPLETED 2 times" in v for v in verdict.violations)


def test_png_size() -> None:
    assert png_size(png(7, 5)) == (7, 5)
    assert png_size(b"GIF89a" + b"\0" * 30) is None


def failed_job(code: str, status: str = "FAILED") -> dict[str, Any]:
    """A job that burned its retries on agent deaths and ended `status`."""
    hist = [
        dict(at=0, from_status=None, to_status="SUBMITTED", event="submit", attempt=0),
        dict(at=0, from_status="SUBMITTED", to_status="QUEUED", event="enqueue", attempt=0),
    ]
    for a in (1, 2, 3):
        hist.append(
            dict(at=a, from_status="QUEUED", to_status="ASSIGNED", event="assign", attempt=a)
        )
        hist.append(
            dict(
                at=a,
                from_status="ASSIGNED",
                to_status="QUEUED",
                event="requeue",
                attempt=a,
                reason="agent a1 lost (silent 7 s)",
            )
        )
    last = hist.pop()
    event = "fail" if status == "FAILED" else "cancel"
    hist.append(dict(last, to_status=status, event=event, reason=code))
    return {
        "status": status,
        "attempt": 3,
        "retries_used": 2,
        "max_retries": 2,
        "history": hist,
        "error": {"code": code, "message": "agent lost, no retries left"},
        "outputs": [],
    }


def test_jobs_that_failed_on_exhausted_retries_are_violations() -> None:
    """A run where valid jobs FAILED with retries_exhausted (what retry-burning defects look
    like) does not pass: each is a violation naming why it ended."""
    good, data = completed_job()
    verdict = check_run(
        {
            "ok": JobEvidence(good, (64, 32), downloads={"o.png": data}),
            "burnt": JobEvidence(failed_job("retries_exhausted"), (64, 32)),
            "burnt2": JobEvidence(failed_job("retries_exhausted"), (64, 32)),
        }
    )
    assert verdict.by_status == {"COMPLETED": 1, "FAILED": 2}
    assert verdict.unexpected == 2 and verdict.retries_used == 4
    burnt = [v for v in verdict.violations if "ended FAILED, expected COMPLETED" in v]
    assert len(burnt) == 2 and all("retries_exhausted" in v for v in burnt), verdict.violations
    assert "agent a1 lost" in burnt[0]  # the requeue reasons say what burnt the retries


def test_a_job_cancelled_or_failed_unasked_is_a_violation_asked_it_is_not() -> None:
    cancelled = failed_job("cancelled", status="CANCELLED")
    assert job_violations("c", JobEvidence(cancelled, (64, 32)))
    assert job_violations("c", JobEvidence(cancelled, (64, 32), expect="CANCELLED")) == []
    failed = failed_job("node_error")
    assert job_violations("f", JobEvidence(failed, (64, 32), expect="FAILED")) == []
    verdict = check_run({"f": JobEvidence(failed, (64, 32), expect="FAILED")})
    assert verdict.unexpected == 0 and verdict.violations == []

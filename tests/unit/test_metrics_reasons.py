"""Metric labels: requeue and failure reasons fall into small fixed sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.metrics import label_value, requeue_reason
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.history import Transition
from comfyfleet.shared.jobspec import JobSpec

pytestmark = pytest.mark.timeout(30)


def job_with(reason: str, error: dict[str, str] | None = None) -> JobRecord:
    job = JobRecord(
        id="j", spec=JobSpec(workflow={}), workflow_hash="h", created_at=0.0, error=error
    )
    job.history.append(Transition(1.0, "RUNNING", "QUEUED", "requeue", reason, 1))
    return job


@pytest.mark.parametrize(
    ("reason", "error", "category"),
    [
        ("agent a1 lost (silent 16 s)", None, "agent_lost"),
        ("not started within 30 s", None, "assign_timeout"),
        ("agent restarted without this job", None, "agent_restart"),
        ("agent did not confirm the cancel", None, "cancel_unconfirmed"),
        (
            "ComfyUI restarted (exited: killed by SIGKILL; log: lost) while the job was on it",
            {"code": "comfyui_restarted"},
            "comfyui_restart",
        ),
        ("CUDA out of memory", {"code": "OOM"}, "oom"),
        ("something new", None, "other"),
    ],
)
def test_requeue_reason(reason: str, error: dict[str, str] | None, category: str) -> None:
    assert requeue_reason(job_with(reason, error)) == category


@given(st.text())
def test_label_values_are_short_snake_case(text: str) -> None:
    value = label_value(text)
    assert 0 < len(value) <= 40
    assert all(c.isascii() and (c.isalnum() or c == "_") and not c.isupper() for c in value)

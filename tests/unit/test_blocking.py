"""Failure blocking per (agent, workflow shape): classification, threshold, cooldown, expiry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.blocking import (
    BlockPolicy,
    FailureBook,
    apply_blocks,
    classify,
)
from comfyfleet.coordinator.scheduler import plan
from tests.unit.test_scheduler_support import NOW, agent, job


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"code": "out_of_memory", "retryable": True}, "agent"),
        ({"code": "missing_model", "retryable": True}, "agent"),
        ({"code": "missing_node_class", "retryable": True}, "agent"),
        ({"code": "prompt_outputs_failed_validation"}, "workflow"),
        ({"code": "execution_error"}, "workflow"),
        ({"code": "timeout", "retryable": True}, "transient"),
        ({"code": "comfyui_lost", "retryable": True}, "transient"),
        (None, "transient"),
    ],
)
def test_classify(error: dict[str, object] | None, kind: str) -> None:
    assert classify(error) == kind


@given(
    threshold=st.integers(1, 4),
    gaps=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=6),
    cooldown=st.floats(301.0, 1000.0),  # longer than the failures take: one block
)
def test_blocked_exactly_after_threshold_failures_until_cooldown(
    threshold: int, gaps: list[float], cooldown: float
) -> None:
    policy = BlockPolicy(threshold=threshold, cooldown_s=cooldown, window_s=1e9)
    book = FailureBook()
    t = NOW
    blocked_at = None
    for n, gap in enumerate(gaps, start=1):
        t += gap
        book, change = book.record_failure("a", "s:x", t, policy)
        if n == threshold:
            assert change is not None and change.kind == "workflow_blocked"
            assert change.until == t + cooldown
            blocked_at = t
        else:
            assert change is None  # no second block while one holds
    if blocked_at is None:
        assert book.blocked(t) == {}
        return
    assert book.blocked(t) == {"s:x": frozenset({"a"})}
    assert book.blocked(t).get("s:other") is None
    still, changes = book.expire(blocked_at + cooldown - 0.001, policy)
    assert changes == [] and still.blocked(blocked_at + cooldown - 0.001)
    later, changes = book.expire(blocked_at + cooldown, policy)
    assert [(c.kind, c.agent_id, c.shape) for c in changes] == [("workflow_unblocked", "a", "s:x")]
    assert later.blocked(blocked_at + cooldown) == {}
    assert later.expire(blocked_at + cooldown + 1, policy)[1] == []  # announced once


def test_failures_outside_the_window_do_not_count_and_success_clears() -> None:
    policy = BlockPolicy(threshold=2, cooldown_s=60, window_s=100)
    book, _ = FailureBook().record_failure("a", "s:x", NOW, policy)
    book, change = book.record_failure("a", "s:x", NOW + 101, policy)
    assert change is None
    book = book.record_success("a", "s:x")
    book, change = book.record_failure("a", "s:x", NOW + 102, policy)
    assert change is None
    assert FailureBook().record_failure("a", "s:x", NOW, BlockPolicy(threshold=0))[1] is None


def test_blocked_pairs_reach_the_plan_only_for_their_shape() -> None:
    policy = BlockPolicy(threshold=1, cooldown_s=60)
    book, _ = FailureBook().record_failure("a", "s:x", NOW, policy)
    agents = [agent("a"), agent("b")]
    jobs = apply_blocks(
        [job("x", workflow_hash="s:x"), job("y", workflow_hash="s:y")], book.blocked(NOW)
    )
    placed = {p.job_id: p.agent_id for p in plan(jobs, agents, NOW).placements}
    assert placed["x"] == "b"
    assert placed["y"] == "a"
    assert book.blocked_on("a", NOW) == {"s:x": NOW + 60}

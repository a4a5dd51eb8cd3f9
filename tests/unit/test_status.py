"""Every (status, event) pair of the transition table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.shared.errors import IllegalTransition
from comfyfleet.shared.status import (
    TERMINAL,
    TRANSITIONS,
    JobEvent,
    JobStatus,
    can,
    is_terminal,
    transition,
)

S, E = JobStatus, JobEvent

EXPECTED = {
    (S.SUBMITTED, E.ENQUEUE): S.QUEUED,
    (S.SUBMITTED, E.CANCEL): S.CANCELLED,
    (S.QUEUED, E.ASSIGN): S.ASSIGNED,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    (S.ASSIGNED, E.START): S.RUNNING,
    (S.ASSIGNED, E.REQUEUE): S.QUEUED,
    (S.ASSIGNED, E.FAIL): S.FAILED,
    (S.ASSIGNED, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.COMPLETE): S.COMPLETED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.REQUEUE): S.QUEUED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
}


@pytest.mark.parametrize(("status", "event"), list(itertools.product(JobStatus, JobEvent)))
def test_every_pair(status: JobStatus, event: JobEvent) -> None:
    if (status, event) in EXPECTED:
        assert transition(status, event) is EXPECTED[(status, event)]
        assert can(status, event)
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(status, event)
        assert info.value.status == status.value and info.value.event == event.value
        assert not can(status, event)


def test_table_is_exactly_the_design() -> None:
    assert TRANSITIONS == EXPECTED


def test_terminal_states_have_no_way_out() -> None:
    for status in TERMINAL:
        assert is_terminal(status)
        assert not any(can(status, e) for e in JobEvent)


def test_every_non_terminal_state_can_be_cancelled() -> None:
    for status in set(JobStatus) - TERMINAL:
        assert transition(status, E.CANCEL) is S.CANCELLED


@given(st.lists(st.sampled_from(list(JobEvent)), max_size=30))
def test_random_walks_stay_in_the_table(events: list[JobEvent]) -> None:
    status = S.SUBMITTED
    for event in events:
        if can(status, event):
            nxt = transition(status, event)
            assert (status, event) in TRANSITIONS and nxt in JobStatus
            status = nxt
        else:
            with pytest.raises(IllegalTransition):
                transition(status, event)
    if is_terminal(status):
        assert all(not can(status, e) for e in JobEvent)

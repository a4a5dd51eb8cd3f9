"""The event bus: monotonic ids, ring-buffer resume, per-job filters, lagging readers dropped."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.events import EventBus

pytestmark = pytest.mark.timeout(30)

jobs = st.sampled_from(["j1", "j2", None])


@given(st.lists(jobs, max_size=60), st.integers(1, 20), st.integers(0, 70))
def test_resume_gives_exactly_the_events_after_the_id(
    owners: list[str | None], ring: int, after: int
) -> None:
    bus = EventBus(ring_size=ring, queue_size=1000)
    published = [bus.publish("job", {"n": i}, job) for i, job in enumerate(owners)]
    assert [e.id for e in published] == list(range(1, len(owners) + 1))
    assert len(bus.ring) == min(ring, len(owners))
    if bus.covers(after):
        sub = bus.subscribe(None, after)
        assert sub.resumed
        assert [e.id for e in sub.buffer] == [e.id for e in published if e.id > after]
        per_job = bus.subscribe("j1", after)
        assert [e.id for e in per_job.buffer] == [
            e.id for e in published if e.id > after and e.job_id == "j1"
        ]
    else:
        # the ring no longer holds everything after `after` (or the id is from the future)
        assert after > len(owners) or after < len(owners) - ring
        sub = bus.subscribe(None, after)
        assert not sub.resumed and not sub.buffer


def test_a_replay_larger_than_the_buffer_is_not_started() -> None:
    bus = EventBus(ring_size=100, queue_size=5)
    for i in range(10):
        bus.publish("progress", {"n": i}, "j")
    big = bus.subscribe("j", 2)
    assert not big.resumed and not big.buffer and not big.closed
    small = bus.subscribe("j", 7)
    assert small.resumed and [e.id for e in small.buffer] == [8, 9, 10]


@given(st.lists(jobs, min_size=1, max_size=50), st.integers(1, 10))
def test_a_lagging_subscriber_is_closed_and_never_blocks(
    owners: list[str | None], limit: int
) -> None:
    bus = EventBus(ring_size=100, queue_size=limit)
    slow = bus.subscribe()
    for i, job in enumerate(owners):
        bus.publish("progress", {"n": i}, job)
    assert len(slow.buffer) <= limit
    assert slow.lagged == (len(owners) > limit)
    assert (slow in bus.subscribers) == (not slow.lagged)


async def test_subscribers_get_live_events_in_order_and_their_job_only() -> None:
    bus = EventBus()
    everything = bus.subscribe()
    one = bus.subscribe("a")
    bus.publish("job", {"s": "QUEUED"}, "a")
    bus.publish("job", {"s": "QUEUED"}, "b")
    bus.publish("agent", {"agent_id": "x"})
    bus.publish("job", {"s": "COMPLETED"}, "a", terminal=True)
    got = [await everything.next(1) for _ in range(4)]
    assert [e.id for e in got if e] == [1, 2, 3, 4]
    mine = [await one.next(1), await one.next(1)]
    assert [(e.id, e.terminal) for e in mine if e] == [(1, False), (4, True)]
    with pytest.raises(TimeoutError):
        await one.next(0.05)


async def test_close_all_ends_waiting_readers() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    waiting = asyncio.create_task(sub.next(5))
    await asyncio.sleep(0)
    bus.close_all()
    assert await asyncio.wait_for(waiting, 1) is None
    assert not bus.subscribers


def test_ids_continue_from_the_start_id() -> None:
    bus = EventBus(start_id=1_000)
    assert bus.covers(1_000) and not bus.covers(999) and not bus.covers(5)
    assert bus.publish("job", {}).id == 1_001
    assert [e.id for e in bus.subscribe(None, 1_000).buffer] == [1_001]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        EventBus(ring_size=0)

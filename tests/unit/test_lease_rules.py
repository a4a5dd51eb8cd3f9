"""The leadership lease's pure rules (coordinator/lease.py): at most one coordinator leads at any
time, epochs only grow, and a holder stops acting before the store lets another take over."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator import lease
from comfyfleet.coordinator.lease import LeaseRow, MemoryLease, Term, believed_until

TTL = 3.0
HOLDERS = ("a", "b", "c")


@dataclass
class Holder:
    name: str
    term: Term | None = None
    epochs: list[int] = field(default_factory=list)


# One step of the world: time passes, then a holder sends a request that the store executes
# `latency` later (the holder's belief counts from when it asked).
steps = st.lists(
    st.tuples(
        st.floats(0, 2.5 * TTL),  # time passing before the request
        st.sampled_from(HOLDERS),
        st.sampled_from(["take", "renew", "release"]),
        st.floats(0, 1.5),  # latency: request sent -> executed by the store
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_at_most_one_holder_acts_and_the_store_holds_its_epoch(script: list) -> None:
    row = LeaseRow()
    holders = {h: Holder(h) for h in HOLDERS}
    now = 0.0
    epochs_taken: list[int] = []

    def check(at: float) -> None:
        acting = [h for h in holders.values() if h.term is not None and h.term.believed(at)]
        assert len(acting) <= 1, f"two holders act at {at}: {acting}"
        for h in acting:
            assert h.term is not None
            assert lease.holds(row, h.term.epoch, at), f"{h.name} acts, the store disagrees"
        valid = [e for e in set(epochs_taken) if lease.holds(row, e, at)]
        assert len(valid) <= 1

    for wait, name, action, latency in script:
        for k in range(5):  # the invariants hold all along the way, not only at steps
            check(now + wait * k / 5)
        now += wait
        asked, now = now, now + latency
        h = holders[name]
        if action == "take":
            new = lease.acquire(row, name, f"http://{name}", now, TTL)
            if new is not None:
                assert not epochs_taken or new.epoch > max(epochs_taken)
                row = new
                epochs_taken.append(new.epoch)
                h.term = Term(new.epoch, believed_until(asked, TTL))
                h.epochs.append(new.epoch)
        elif action == "renew" and h.term is not None:
            new = lease.renew(row, h.term.epoch, name, now, TTL)
            if new is None:
                h.term = None  # lost: never acts under that epoch again
            else:
                row = new
                h.term = Term(h.term.epoch, believed_until(asked, TTL))
        elif action == "release" and h.term is not None:
            new = lease.release(row, h.term.epoch, name, now)
            row = new if new is not None else row
            h.term = None
        check(now)


@given(st.floats(0, 100), st.floats(0.1, 10))
def test_a_lease_that_ran_out_cannot_be_renewed_only_taken_again(at: float, ttl: float) -> None:
    row = lease.acquire(LeaseRow(), "a", "u", at, ttl)
    assert row is not None and row.epoch == 1
    assert lease.renew(row, 1, "a", at + ttl, ttl) is None  # ended: not renewable
    again = lease.acquire(row, "a", "u", at + ttl, ttl)
    assert again is not None and again.epoch == 2  # a new epoch: the old one's writes fail
    assert not lease.holds(again, 1, at + ttl) and lease.holds(again, 2, at + ttl)


def test_nobody_takes_a_running_lease_and_the_holder_keeps_it_by_renewing() -> None:
    row = lease.acquire(LeaseRow(), "a", "ua", 0.0, TTL)
    assert row is not None
    assert lease.acquire(row, "b", "ub", TTL - 0.01, TTL) is None
    row = lease.renew(row, 1, "a", 2.0, TTL)
    assert row is not None and row.expires_at == 2.0 + TTL
    assert lease.acquire(row, "b", "ub", TTL + 1, TTL) is None
    assert lease.renew(row, 1, "b", 2.5, TTL) is None  # only the holder renews
    assert lease.current(row, 2.5) == lease.Leader(1, "a", "ua")


def test_release_hands_over_at_once() -> None:
    row = lease.acquire(LeaseRow(), "a", "ua", 0.0, TTL)
    assert row is not None
    assert lease.release(row, 1, "b", 1.0) is None  # not b's to give
    released = lease.release(row, 1, "a", 1.0)
    assert released is not None and lease.current(released, 1.0) is None
    taken = lease.acquire(released, "b", "ub", 1.0, TTL)
    assert taken is not None and taken.epoch == 2


@given(st.floats(0, 1e6), st.floats(0.5, 60))
def test_the_holder_stops_acting_before_the_store_ends_the_lease(asked: float, ttl: float) -> None:
    executed = asked  # at the earliest, the store ran the request when it was sent
    assert believed_until(asked, ttl) < executed + ttl


def test_memory_lease_follows_the_rules() -> None:
    now = [0.0]
    leases = MemoryLease(lambda: now[0])
    assert leases.try_lead("a", "ua", TTL) == 1
    assert leases.try_lead("b", "ub", TTL) is None
    now[0] = 2.0
    assert leases.renew(1, "a", TTL)
    now[0] = 4.9
    assert leases.leader() == lease.Leader(1, "a", "ua")
    now[0] = 5.0
    assert leases.leader() is None and not leases.renew(1, "a", TTL)
    assert leases.try_lead("b", "ub", TTL) == 2
    leases.release(2, "b")
    assert leases.try_lead("a", "ua", TTL) == 3
    assert leases.began == {1: 0.0, 2: 5.0, 3: 5.0}

"""The leadership lease's rules (DESIGN.md §8), pure: which coordinator places jobs, and when.

Several coordinators on one PostgreSQL store share one lease row: an epoch (the fencing token),
its holder (one coordinator process), the holder's URL and when the lease ends, on the store's
clock. The rules:

- anyone may take the lease once it has ended; taking it starts a new epoch;
- only the holder of the current epoch may renew it, and only before it ends (a lease that ran
  out is gone: its holder must take it again, with a new epoch, and start over);
- a write of the leader is accepted only while its epoch holds (`holds`), so a paused ex-leader
  writes nothing once a new epoch exists;
- the holder itself believes it leads only until `asked + ttl - margin` on its own monotonic
  clock, where `asked` is when it sent the request that took or renewed the lease: that moment
  precedes the store's, so the holder stops acting before the store ends the lease.

`store/postgres_lead.py` runs these same rules in SQL; `MemoryLease` runs them on a Python row
(for tests of the coordinator's leadership loop without a database).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

NEVER = float("-inf")
MARGIN = 0.2  # of the lease's length: the holder stops acting this much before the store would


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """The lease as the store keeps it."""

    epoch: int = 0
    holder: str = ""
    url: str = ""
    expires_at: float = NEVER


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads now, as any coordinator may learn it: for redirects and /healthz."""

    epoch: int
    holder: str
    url: str


def valid(row: LeaseRow, now: float) -> bool:
    return now < row.expires_at


def acquire(row: LeaseRow, holder: str, url: str, now: float, ttl_s: float) -> LeaseRow | None:
    """The row after `holder` takes the lease, or None while someone else's lease runs."""
    if valid(row, now):
        return None
    return LeaseRow(row.epoch + 1, holder, url, now + ttl_s)


def renew(row: LeaseRow, epoch: int, holder: str, now: float, ttl_s: float) -> LeaseRow | None:
    """The row after the holder of `epoch` extends its lease, or None: the lease ended or
    another epoch began (the holder has lost it)."""
    if row.epoch != epoch or row.holder != holder or not valid(row, now):
        return None
    return dataclasses.replace(row, expires_at=now + ttl_s)


def release(row: LeaseRow, epoch: int, holder: str, now: float) -> LeaseRow | None:
    """The row after the holder gives the lease up (shutdown), so another may take it at once."""
    if row.epoch != epoch or row.holder != holder or not valid(row, now):
        return None
    return dataclasses.replace(row, expires_at=now)


def holds(row: LeaseRow, epoch: int, now: float) -> bool:
    """The fence: may a write made under `epoch` be accepted at `now`?"""
    return row.epoch == epoch and valid(row, now)


def current(row: LeaseRow, now: float) -> Leader | None:
    return Leader(row.epoch, row.holder, row.url) if valid(row, now) else None


@dataclass(frozen=True, slots=True)
class Term:
    """The holder's own view of its lease: the epoch, and until when (its monotonic clock) it
    acts as the leader."""

    epoch: int
    until: float

    def believed(self, now: float) -> bool:
        return now < self.until


def believed_until(asked: float, ttl_s: float, margin: float = MARGIN) -> float:
    """Until when a holder acts on a lease it took or renewed with a request sent at `asked`."""
    return asked + ttl_s * (1.0 - margin)


class MemoryLease:
    """The lease rules on an in-memory row with an injected clock (tests, no database)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.row = LeaseRow()
        self.clock = clock
        self.began: dict[int, float] = {}  # epoch -> when it began

    def try_lead(self, holder: str, url: str, ttl_s: float) -> int | None:
        now = self.clock()
        new = acquire(self.row, holder, url, now, ttl_s)
        if new is None:
            return None
        self.row = new
        self.began[new.epoch] = now
        return new.epoch

    def renew(self, epoch: int, holder: str, ttl_s: float) -> bool:
        new = renew(self.row, epoch, holder, self.clock(), ttl_s)
        if new is not None:
            self.row = new
        return new is not None

    def release(self, epoch: int, holder: str) -> None:
        new = release(self.row, epoch, holder, self.clock())
        if new is not None:
            self.row = new

    def leader(self) -> Leader | None:
        return current(self.row, self.clock())

"""The in-process event bus: live job and fleet events for SSE streams (dashboard, CLI, client).

Every published event gets the next id (monotonic, from 1). The last `ring_size` events stay in a
ring buffer, so a subscriber that reconnects with `Last-Event-ID` gets what it missed. Publishing
never blocks and never awaits: each subscriber has a bounded buffer, and a subscriber that falls
`queue_size` events behind is closed as lagging (it may reconnect and resume from the ring).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

JOB = "job"  # a status change (and the snapshot a stream starts with)
PROGRESS = "progress"
PREVIEW = "preview"
OUTPUT = "output"
AGENT = "agent"
COMFYUI_RESTARTED = "comfyui_restarted"  # an agent restarted one of its managed ComfyUIs


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]
    job_id: str | None = None
    terminal: bool = False  # the job reached its terminal state with this event


@dataclass(eq=False, slots=True)
class Subscription:
    """One reader's view of the bus: a bounded buffer filled by `publish`, drained by `next`."""

    job_id: str | None
    limit: int
    buffer: deque[Event] = field(default_factory=deque)
    closed: bool = False
    lagged: bool = False
    resumed: bool = False  # the events since the asked-for id were replayed
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, event: Event) -> bool:
        """Buffer one event; False (and closed as lagging) when the reader is too far behind."""
        if self.closed:
            return False
        if len(self.buffer) >= self.limit:
            self.lagged = True
            self.close()
            return False
        self.buffer.append(event)
        self.ready.set()
        return True

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    async def next(self, wait_s: float | None = None) -> Event | None:
        """The next event; None once closed and drained. Raises TimeoutError after `wait_s`."""
        while not self.buffer:
            if self.closed:
                return None
            self.ready.clear()
            await asyncio.wait_for(self.ready.wait(), wait_s)
        return self.buffer.popleft()


class EventBus:
    def __init__(self, ring_size: int = 4096, queue_size: int = 1024, start_id: int = 0) -> None:
        """`start_id`: ids continue from here; a coordinator starts from its start time in
        microseconds, so ids keep growing across restarts and an id from a previous run is never
        mistaken for one of this run."""
        if ring_size < 1 or queue_size < 1 or start_id < 0:
            raise ValueError("ring_size and queue_size must be positive, start_id not negative")
        self.ring: deque[Event] = deque(maxlen=ring_size)
        self.queue_size = queue_size
        self.last_id = start_id
        self.by_job: dict[str | None, set[Subscription]] = {}  # None: fleet-wide readers
        self.dropped_subscribers = 0

    @property
    def subscribers(self) -> set[Subscription]:
        return {sub for subs in self.by_job.values() for sub in subs}

    def publish(
        self, kind: str, data: dict[str, Any], job_id: str | None = None, terminal: bool = False
    ) -> Event:
        self.last_id += 1
        event = Event(self.last_id, kind, data, job_id, terminal)
        self.ring.append(event)
        keys = (None,) if job_id is None else (None, job_id)
        for key in keys:
            for sub in list(self.by_job.get(key, ())):
                if not sub.push(event):
                    self._remove(sub)
                    self.dropped_subscribers += 1
        return event

    def _remove(self, sub: Subscription) -> None:
        subs = self.by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.by_job[sub.job_id]

    def covers(self, after: int) -> bool:
        """Whether the ring still holds every event with an id greater than `after`."""
        oldest = self.ring[0].id if self.ring else self.last_id + 1
        return after >= oldest - 1 and after <= self.last_id

    def since(self, after: int, job_id: str | None = None) -> Iterable[Event]:
        return (e for e in self.ring if e.id > after and (job_id is None or e.job_id == job_id))

    def subscribe(self, job_id: str | None = None, after: int | None = None) -> Subscription:
        """A new subscription; with `after`, the ring's events since that id are queued first.

        The replay happens only when the ring still holds all of them and they fit in the
        subscriber's buffer (`resumed` says whether it did); otherwise the caller starts the
        reader from a snapshot. Replay and registration happen in one synchronous step, so no
        event falls between them.
        """
        sub = Subscription(job_id, self.queue_size)
        if after is not None and self.covers(after):
            missed = list(self.since(after, job_id))
            if len(missed) < self.queue_size:
                sub.buffer.extend(missed)
                sub.resumed = True
        self.by_job.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._remove(sub)
        sub.close()

    def close_all(self) -> None:
        for sub in list(self.subscribers):
            self.unsubscribe(sub)

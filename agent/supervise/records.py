"""What an agent remembers and reports of one managed instance's restarts."""

from __future__ import annotations

from collections import deque
from typing import Any

from comfyfleet.shared import protocol as p

RECENT = 8  # restarts repeated in every heartbeat (the coordinator publishes the new ones)


class RestartLog:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.recent: deque[p.RestartEvent] = deque(maxlen=RECENT)

    def add(self, at: float, reason: str, detail: str, job_id: str | None) -> p.RestartEvent:
        if self.recent and at <= self.recent[-1].at:
            at = self.recent[-1].at + 1e-6  # strictly increasing: the coordinator keys on it
        event = p.RestartEvent(at=at, reason=reason, detail=detail[:2000], job_id=job_id)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.recent.append(event)
        return event

    @property
    def last_reason(self) -> str | None:
        return self.recent[-1].reason if self.recent else None

    def fields(self) -> dict[str, Any]:
        """The InstanceInfo fields about restarts."""
        return {
            "last_restart_reason": self.last_reason,
            "restart_counts": dict(self.counts),
            "restarts": list(self.recent),
        }

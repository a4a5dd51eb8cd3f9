"""Restarts of agents' managed ComfyUIs, as the coordinator learns of them from heartbeats.

Each instance in a heartbeat carries its last few `RestartEvent`s (the agent repeats them until
they age out of its short list), so a lost heartbeat loses nothing. `fresh` picks the ones not
seen before, by time per instance; an instance seen for the first time (new agent, or the
coordinator restarted) has its list taken as already known, so nothing is published twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from comfyfleet.shared.protocol import InstanceInfo, RestartEvent

Seen = Mapping[str, float]  # instance_id -> time of the newest restart already published


def fresh(
    seen: Seen, instances: Iterable[InstanceInfo]
) -> tuple[list[tuple[str, RestartEvent]], dict[str, float]]:
    """The (instance_id, event) pairs to publish, oldest first, and the new `seen`."""
    out: list[tuple[str, RestartEvent]] = []
    new_seen = dict(seen)
    for inst in instances:
        if not inst.restarts:
            new_seen.setdefault(inst.instance_id, float("-inf"))
            continue
        newest = max(r.at for r in inst.restarts)
        last = seen.get(inst.instance_id)
        if last is not None:
            out.extend((inst.instance_id, r) for r in inst.restarts if r.at > last)
        new_seen[inst.instance_id] = max(newest, last if last is not None else newest)
    out.sort(key=lambda pair: pair[1].at)
    return out, new_seen


def event_data(agent_id: str, instance_id: str, event: RestartEvent) -> dict[str, Any]:
    """A `comfyui_restarted` fleet event as the streams carry it."""
    return {
        "agent_id": agent_id,
        "instance_id": instance_id,
        "at": event.at,
        "reason": event.reason,
        "detail": event.detail,
        "job_id": event.job_id,
    }

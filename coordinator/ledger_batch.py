"""A batch of ledger changes (`Ledger.batch`): one store transaction, memory that can be put back.

The reports of one agent request (POST agent/v1/reports) are applied one after the other on the
event loop with no await between them, so no other request sees memory while the batch is open.
Their store writes join one transaction (`Store.batch`), committed when the batch ends. Memory
moves with each change as usual, because a later report of the batch reads what an earlier one
did (a finish after its started). What reaches the outside, the feed (event streams, metrics, the
ComfyUI facade), and the changes' after-effects (an attempt's files dropped, learning, counters)
wait for the commit, so a failed batch has told nobody anything and a retried one does them once.

If the batch fails (a store fault, at COMMIT included), the store keeps nothing of it and memory is
put back: each live index's entry for every job the batch touched, and the entries of the agents
the job moved between, as they were the first time the batch touched the job. Memory matched the
store before the batch (every change reaches memory only after its write), so this is exactly what
the store holds after the rollback, and it needs no read from a store that has just failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import structlog

from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.state import Live

log = structlog.get_logger("coordinator")
_ABSENT = object()
# (a dict or set of memory, whether it held the job id, the value it held)
Entry = tuple[dict[str, Any] | set[str], bool, Any]


def tables(holder: object, skip: tuple[object, ...] = ()) -> list[dict[str, Any] | set[str]]:
    """Every dict and set attribute of `holder` (Live, an AgentState) but those in `skip`
    (tables not keyed by job id)."""
    if dataclasses.is_dataclass(holder):
        values = [getattr(holder, f.name) for f in dataclasses.fields(holder)]
    else:
        values = list(vars(holder).values())
    return [
        t for t in values if isinstance(t, (dict, set)) and not any(t is other for other in skip)
    ]


def _entries(holder_tables: list[dict[str, Any] | set[str]], job_id: str) -> list[Entry]:
    """The job's entry (or its absence) in each table."""
    out: list[Entry] = []
    for table in holder_tables:
        if isinstance(table, dict):
            value = table.get(job_id, _ABSENT)
            out.append((table, value is not _ABSENT, value))
        else:
            out.append((table, job_id in table, None))
    return out


class Later:
    """Calls on an object (the feed) kept to be made later, in order."""

    def __init__(self, target: object, queue: list[Callable[[], None]]) -> None:
        self._target = target
        self._queue = queue

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def later(*args: Any, **kw: Any) -> None:
            self._queue.append(lambda: attr(*args, **kw))

        return later


class Pending:
    """An open batch: what memory held before it, and what waits for its commit."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.later: list[Callable[[], None]] = []
        self.before: dict[str, list[Entry]] = {}
        self.agents_seen: set[tuple[str, str]] = set()  # (job id, agent id) already kept
        self.live_tables = tables(live, (live.agents, live.counters))
        self.agent_tables: dict[str, list[dict[str, Any] | set[str]]] = {}

    def touch(self, old: JobRecord, new: JobRecord) -> None:
        """Keep the job's memory entries before its change from `old` to `new` is indexed."""
        entries = self.before.get(new.id)
        if entries is None:
            entries = self.before[new.id] = _entries(self.live_tables, new.id)
        for agent_id in (old.agent_id, new.agent_id):
            agent = self.live.agents.get(agent_id or "")
            if agent is not None and (new.id, agent.agent_id) not in self.agents_seen:
                self.agents_seen.add((new.id, agent.agent_id))
                held = self.agent_tables.get(agent.agent_id)
                if held is None:
                    held = self.agent_tables[agent.agent_id] = tables(agent)
                entries.extend(_entries(held, new.id))

    def undo(self) -> None:
        """Memory as before the batch (the batch's store writes were rolled back)."""
        for job_id, entries in reversed(self.before.items()):
            for table, held, value in reversed(entries):
                if isinstance(table, set):
                    if held:
                        table.add(job_id)
                    else:
                        table.discard(job_id)
                elif held:
                    table[job_id] = value
                else:
                    table.pop(job_id, None)
        self.live.wake.set()  # what the batch took off the queue is back on it

    def run(self) -> None:
        """After the commit: the kept calls and after-effects, in order. The batch is durable
        already, so one that fails is logged and the others still run."""
        for call in self.later:
            try:
                call()
            except Exception:
                log.exception("after_commit_failed")

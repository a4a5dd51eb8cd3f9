"""Failure blocking per (agent, workflow shape), with a cooldown — pure data and pure moves.

A ComfyUI host that lacks a model, lacks a custom node or runs out of memory on one workflow
should not keep failing it while other hosts could run it. Failures the agent's own setup causes
(`classify` says "agent") count per (agent, shape hash); after `threshold` of them within
`window_s` the pair is blocked until `cooldown_s` has passed, and placement treats the agent as
infeasible for jobs of that shape. Failures of the workflow itself ("workflow": ComfyUI refused
the graph, a node raised) fail the job and block nothing; transient ones (agent lost, timeout)
block nothing either. A success clears the pair's count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from comfyfleet.coordinator.scheduler.model import JobRequest
from comfyfleet.shared.protocol import INSTANCE_BROKEN

FailureKind = Literal["workflow", "agent", "transient"]
Pair = tuple[str, str]  # (agent_id, shape hash)

# error codes (from the agent's ErrorInfo) caused by that host's setup, not by the workflow; a
# job that crashed or hung the host's ComfyUI twice (INSTANCE_BROKEN) counts against the pair too
AGENT_SPECIFIC = frozenset(
    {"out_of_memory", "missing_model", "missing_node_class", INSTANCE_BROKEN}
)


def classify(error: Mapping[str, Any] | None) -> FailureKind:
    """Whose fault a failed attempt was: the workflow's (fail the job), the host's (block the
    pair, requeue), or nobody's in particular (requeue)."""
    if not error:
        return "transient"
    code = str(error.get("code", ""))
    if code in AGENT_SPECIFIC:
        return "agent"
    if error.get("retryable"):
        return "transient"
    return "workflow"


@dataclass(frozen=True, slots=True)
class PairState:
    failures: tuple[float, ...] = ()  # times of counted failures, oldest first
    blocked_until: float | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A block that started or ended, for the event stream."""

    kind: Literal["workflow_blocked", "workflow_unblocked"]
    agent_id: str
    shape: str
    until: float | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class BlockPolicy:
    threshold: int = 2  # failures of one pair within the window that block it (0: never block)
    cooldown_s: float = 60.0
    window_s: float = 600.0


@dataclass(frozen=True, slots=True)
class FailureBook:
    pairs: Mapping[Pair, PairState] = dataclasses.field(default_factory=dict)

    def record_failure(
        self, agent_id: str, shape: str, now: float, policy: BlockPolicy
    ) -> tuple[FailureBook, Change | None]:
        old = self.pairs.get((agent_id, shape), PairState())
        times = tuple(t for t in old.failures if now - t < policy.window_s) + (now,)
        until = old.blocked_until
        change = None
        already = until is not None and until > now
        if policy.threshold > 0 and len(times) >= policy.threshold and not already:
            until = now + policy.cooldown_s
            change = Change("workflow_blocked", agent_id, shape, until, len(times))
        pairs = dict(self.pairs)
        pairs[(agent_id, shape)] = PairState(times, until)
        return FailureBook(pairs), change

    def record_success(self, agent_id: str, shape: str) -> FailureBook:
        if (agent_id, shape) not in self.pairs:
            return self
        pairs = dict(self.pairs)
        del pairs[(agent_id, shape)]
        return FailureBook(pairs)

    def expire(self, now: float, policy: BlockPolicy) -> tuple[FailureBook, list[Change]]:
        """Lift blocks whose cooldown is over (their count starts again from zero) and forget
        failures older than the window."""
        changes: list[Change] = []
        pairs: dict[Pair, PairState] = {}
        dirty = False
        for (agent_id, shape), st in self.pairs.items():
            if st.blocked_until is not None and st.blocked_until <= now:
                changes.append(Change("workflow_unblocked", agent_id, shape))
                dirty = True
                continue
            times = tuple(t for t in st.failures if now - t < policy.window_s)
            if not times and st.blocked_until is None:
                dirty = True
                continue
            if times != st.failures:
                dirty = True
            pairs[(agent_id, shape)] = PairState(times, st.blocked_until)
        return (FailureBook(pairs) if dirty else self), changes

    def blocked(self, now: float) -> dict[str, frozenset[str]]:
        """shape hash -> agents it is blocked on now."""
        out: dict[str, set[str]] = {}
        for (agent_id, shape), st in self.pairs.items():
            if st.blocked_until is not None and st.blocked_until > now:
                out.setdefault(shape, set()).add(agent_id)
        return {shape: frozenset(agents) for shape, agents in out.items()}

    def blocked_on(self, agent_id: str, now: float) -> dict[str, float]:
        """shape hash -> until when, for one agent (the agent view shows it)."""
        return {
            shape: st.blocked_until
            for (a, shape), st in self.pairs.items()
            if a == agent_id and st.blocked_until is not None and st.blocked_until > now
        }


def apply_blocks(
    requests: Iterable[JobRequest], blocked: Mapping[str, frozenset[str]]
) -> list[JobRequest]:
    """The queue as the plan must see it: each job's blocked agents for its shape added."""
    if not blocked:
        return list(requests)
    out = []
    for r in requests:
        agents = blocked.get(r.workflow_hash)
        if agents:
            r = dataclasses.replace(r, blocked_agents=r.blocked_agents | agents)
        out.append(r)
    return out

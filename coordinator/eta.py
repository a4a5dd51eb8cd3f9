"""The time left of a job: from what its workflow shape took before on this kind of slot, and
where the running attempt is now (pure values and functions).

A shape that ran before has a learned run time and, per node, a learned execution time
(`estimates.Estimate`). A running attempt's `Position` follows its progress events: the node
executing now and since when, the nodes done, the nodes ComfyUI served from its cache. The time
left is then the learned time of the nodes still to run, what is left of the current node, and
what is left of the time the runs spend outside nodes (submission, output upload). When the
attempt runs on schedule this falls exactly as fast as wall time passes; when a node runs longer
than learned, its share stops falling (it never grows), unless the node's own step counter shows
how far it is (a reason to say more). Without a per-node history the learned run time counts
down; only past it, or with nothing learned, does the overall progress fraction speak — whose
steps are weighted by node count and jump, so it is the last resort, not a bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MIN_FRACTION = 0.05  # below this, a progress fraction says too little to extrapolate from


@dataclass(frozen=True, slots=True)
class Expected:
    """What the shape's recent runs on this kind of slot took."""

    total_s: float | None = None  # mean run time, RUNNING to COMPLETED
    node_s: Mapping[str, float] = field(default_factory=dict)  # mean seconds per executed node


@dataclass(frozen=True, slots=True)
class Position:
    """Where a running attempt is, from its progress events (times on the coordinator's clock)."""

    node: str | None = None  # the node executing now
    node_since: float = 0.0  # when it began
    done: frozenset[str] = frozenset()  # nodes that finished executing
    cached: frozenset[str] = frozenset()  # nodes ComfyUI served from its cache
    # time spent in finished nodes, each counted up to its learned time (an overrun counts as
    # time outside nodes: it uses up the allowance for the time runs spend there)
    in_nodes_s: float = 0.0
    step: float | None = None  # the current node's own progress (value / max), 0..1
    step_at: float = 0.0  # when it was reported


def executing(pos: Position, node: str, at: float, learned: Mapping[str, float]) -> Position:
    """`node` began executing at `at`; the node before it (if any) is done."""
    if node == pos.node:
        return pos
    done = _finished(pos, at, learned)
    return dataclasses.replace(done, node=node, node_since=at, step=None)


def stepped(
    pos: Position, node: str, value: float, maximum: float, at: float, learned: Mapping[str, float]
) -> Position:
    """The node's step counter moved to `value` of `maximum`."""
    pos = executing(pos, node, at, learned)
    step = min(1.0, max(0.0, value / maximum)) if maximum > 0 else None
    return dataclasses.replace(pos, step=step, step_at=at)


def executed(pos: Position, node: str, at: float, learned: Mapping[str, float]) -> Position:
    """`node` finished (an output node reports this; others finish when the next one begins)."""
    if node != pos.node:
        return dataclasses.replace(pos, done=pos.done | {node})
    return _finished(pos, at, learned)


def served_from_cache(pos: Position, nodes: list[str] | tuple[str, ...]) -> Position:
    return dataclasses.replace(pos, cached=pos.cached | frozenset(nodes))


def _finished(pos: Position, at: float, learned: Mapping[str, float]) -> Position:
    if pos.node is None:
        return pos
    counted = min(max(0.0, at - pos.node_since), learned.get(pos.node, 0.0))
    return dataclasses.replace(
        pos,
        node=None,
        done=pos.done | {pos.node},
        in_nodes_s=pos.in_nodes_s + counted,
        step=None,
    )


def remaining_s(
    expected: Expected | None,
    running_since: float,
    pos: Position,
    fraction: float | None,
    now: float,
) -> float | None:
    """Seconds a running attempt still needs (None when nothing is known)."""
    elapsed = max(0.0, now - running_since)
    total = expected.total_s if expected is not None else None
    plan = expected.node_s if expected is not None else {}
    if plan:
        return _by_nodes(plan, total, elapsed, pos, now)
    if total is not None and total > elapsed:
        return total - elapsed
    if fraction is not None and MIN_FRACTION <= fraction < 1.0:
        return elapsed * (1.0 - fraction) / fraction  # past the learned time, or none learned
    return 0.0 if total is not None else None


def _by_nodes(
    plan: Mapping[str, float], total: float | None, elapsed: float, pos: Position, now: float
) -> float:
    skip = pos.done | pos.cached
    rest = sum(s for node, s in plan.items() if node not in skip and node != pos.node)
    current = 0.0
    in_current = 0.0  # time in the current node that counts as node time
    if pos.node is not None:
        in_node = max(0.0, now - pos.node_since)
        learned = plan.get(pos.node, 0.0)
        in_current = min(in_node, learned)
        if in_node < learned:
            current = learned - in_node
        elif pos.step is not None and MIN_FRACTION <= pos.step < 1.0:
            # Behind schedule: at the pace its steps went until the last report, the node ends
            # this much later (falling with wall time until the next report).
            took = max(0.0, pos.step_at - pos.node_since)
            current = max(0.0, took * (1.0 - pos.step) / pos.step - (now - pos.step_at))
    outside = max(0.0, elapsed - pos.in_nodes_s - in_current)
    overhead = max(0.0, (total or 0.0) - sum(plan.values()))
    return rest + current + max(0.0, overhead - outside)


def eta(
    expected: Expected | None,
    status: str,
    running_since: float | None,
    pos: Position | None,
    fraction: float | None,
    now: float,
) -> dict[str, Any] | None:
    """Expected total and remaining seconds of a job (None when nothing is known): while it
    waits, the whole learned run time (queue wait not included); while it runs, `remaining_s`."""
    if status in ("COMPLETED", "FAILED", "CANCELLED"):
        return None
    total = expected.total_s if expected is not None else None
    if status != "RUNNING" or running_since is None:
        if total is None:
            return None
        return {"expected_s": round(total, 3), "remaining_s": round(total, 3)}
    remaining = remaining_s(expected, running_since, pos or Position(), fraction, now)
    if remaining is None:
        return None
    return {
        "expected_s": round(total, 3) if total is not None else None,
        "elapsed_s": round(max(0.0, now - running_since), 3),
        "remaining_s": round(remaining, 3),
        "eta_at": round(now + remaining, 3),
    }

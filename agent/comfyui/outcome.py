"""How one prompt ended on ComfyUI (``PromptOutcome``), and the pure rule from what the tracker
saw (and a stop we asked for) to that outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from comfyfleet.agent.comfyui.events import Failed, Interrupted, OutputRef, Succeeded
from comfyfleet.agent.comfyui.tracker import PromptTracker

__all__ = ["OutcomeStatus", "PromptOutcome", "StopReason", "ending", "snapshot"]

OutcomeStatus = Literal["succeeded", "failed", "rejected", "cancelled", "timeout", "lost"]
StopReason = Literal["cancelled", "timeout"]


@dataclass(frozen=True, slots=True)
class PromptOutcome:
    """How one prompt ended on ComfyUI."""

    status: OutcomeStatus
    prompt_id: str
    outputs: list[OutputRef] = field(default_factory=list)
    error: Failed | None = None  # failed: the node error (or the foreign interrupt)
    rejection: dict[str, Any] | None = None  # rejected: ComfyUI's "error" object
    node_errors: dict[str, Any] = field(default_factory=dict)  # rejected: per-node errors
    interrupted: Interrupted | None = None  # cancelled/timeout: where ComfyUI stopped
    reason: str = ""  # human-readable detail (lost, cancelled, timeout)
    cached: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # node -> seconds (WS-observed)
    number: int | None = None  # ComfyUI's queue number

    @property
    def retryable(self) -> bool:
        """Worth running again (maybe elsewhere): lost, timeout, OOM-like failures."""
        if self.status in ("lost", "timeout"):
            return True
        return self.status == "failed" and self.error is not None and self.error.retryable


def snapshot(
    tracker: PromptTracker, status: OutcomeStatus, number: int | None, **details: Any
) -> PromptOutcome:
    """An outcome with what the tracker saw so far: outputs, cached nodes, node timings."""
    return PromptOutcome(
        status=status,
        prompt_id=tracker.prompt_id,
        outputs=list(tracker.outputs),
        cached=list(tracker.cached),
        timings=dict(tracker.timings),
        number=number,
        **details,
    )


def ending(tracker: PromptTracker, stop: StopReason | None, number: int | None) -> PromptOutcome:
    """The outcome of a prompt whose stream ended, from the tracker's terminal update.

    An interrupt we asked for (cancel, timeout) ends as that stop; an interrupt nobody here
    asked for is a retryable failure; no terminal update at all is ``lost``.
    """
    result = tracker.result
    if isinstance(result, Succeeded):
        return snapshot(tracker, "succeeded", number)
    if isinstance(result, Failed):
        return snapshot(tracker, "failed", number, error=result)
    if isinstance(result, Interrupted):
        if stop is not None:
            reason = f"interrupted at node {result.node_id}"
            return snapshot(tracker, stop, number, reason=reason, interrupted=result)
        foreign = Failed(
            node_id=result.node_id,
            node_type=result.node_type,
            exception_type="Interrupted",
            exception_message="interrupted by another ComfyUI client",
            retryable=True,
        )
        return snapshot(tracker, "failed", number, error=foreign, interrupted=result)
    return snapshot(tracker, "lost", number, reason="prompt ended but its result is unknown")

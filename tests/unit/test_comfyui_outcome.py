"""The pure rule from a tracker's terminal update (and a stop we asked for) to the outcome."""

from __future__ import annotations

import pytest

from comfyfleet.agent.comfyui.events import Failed, Interrupted, OutputRef, Succeeded
from comfyfleet.agent.comfyui.outcome import StopReason, ending
from comfyfleet.agent.comfyui.tracker import PromptTracker


def tracker_with(result: Succeeded | Failed | Interrupted | None) -> PromptTracker:
    tracker = PromptTracker("p-1")
    tracker.outputs.append(OutputRef("a.png", "", "output", "9"))
    tracker.cached.append("4")
    tracker.result = result
    return tracker


def test_success_carries_what_the_tracker_saw() -> None:
    out = ending(tracker_with(Succeeded()), None, 7)
    assert (out.status, out.prompt_id, out.number) == ("succeeded", "p-1", 7)
    assert out.outputs == [OutputRef("a.png", "", "output", "9")] and out.cached == ["4"]
    assert not out.retryable


def test_a_node_error_is_a_failure_retryable_only_when_oom() -> None:
    oom = Failed("3", "KSampler", "torch.OutOfMemoryError", "CUDA out of memory", retryable=True)
    out = ending(tracker_with(oom), None, None)
    assert out.status == "failed" and out.error == oom and out.retryable
    wrong = Failed("3", "KSampler", "ValueError", "bad input")
    assert not ending(tracker_with(wrong), "cancelled", None).retryable


@pytest.mark.parametrize("stop", ["cancelled", "timeout"])
def test_an_interrupt_we_asked_for_ends_as_that_stop(stop: StopReason) -> None:
    where = Interrupted("3", "KSampler")
    out = ending(tracker_with(where), stop, 2)
    assert out.status == stop and out.interrupted == where
    assert out.reason == "interrupted at node 3" and out.error is None


def test_someone_elses_interrupt_is_a_retryable_failure() -> None:
    out = ending(tracker_with(Interrupted("3", "KSampler")), None, 2)
    assert out.status == "failed" and out.retryable and out.interrupted is not None
    assert out.error is not None and out.error.exception_type == "Interrupted"
    assert (out.error.node_id, out.error.node_type) == ("3", "KSampler")


def test_no_terminal_update_is_lost() -> None:
    out = ending(tracker_with(None), None, None)
    assert out.status == "lost" and out.retryable and "unknown" in out.reason

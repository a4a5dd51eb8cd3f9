"""ComfyUI's own frames about one prompt, forwarded as they came (for the coordinator's ComfyUI
facade, which replays them to its clients; an assignment asks with `forward_frames`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfyfleet.agent.comfyui.events import Done, Update
from comfyfleet.agent.comfyui.tracker import PromptTracker

__all__ = ["FORWARDED", "Frame", "with_frame"]

# ComfyUI's execution events (not `status`, which describes the agent's ComfyUI as a whole).
FORWARDED = frozenset(
    {
        "execution_start",
        "execution_cached",
        "executing",
        "progress",
        "progress_state",
        "executed",
        "execution_success",
        "execution_error",
        "execution_interrupted",
    }
)


@dataclass(frozen=True, slots=True)
class Frame:
    """A ComfyUI text frame about the followed prompt, exactly as ComfyUI sent it."""

    msg: Mapping[str, Any]


def forwarded(tracker: PromptTracker, msg: Any) -> Frame | None:
    """The frame to forward, judged before the tracker takes it (a frame without prompt_id is
    the prompt's only while it runs, and the tracker's end changes that)."""
    if isinstance(msg, Mapping) and msg.get("type") in FORWARDED and tracker.owns(msg):
        return Frame(msg)
    return None


def with_frame(updates: list[Update], frame: Frame | None) -> list[Update | Frame]:
    """The updates a frame caused, then the frame itself, a closing `Done` staying last."""
    if frame is None:
        return list(updates)
    if updates and isinstance(updates[-1], Done):
        return [*updates[:-1], frame, updates[-1]]
    return [*updates, frame]

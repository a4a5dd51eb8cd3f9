"""What GET /history/{prompt_id} says about one prompt (pure).

``/history/{id}`` answers ``{}`` for pending, unknown and deleted ids; an interrupted prompt is
``status_str: "error"`` and only an ``execution_interrupted`` message tells it apart
(shared/COMFYUI.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from comfyfleet.agent.comfyui.events import (
    Failed,
    Interrupted,
    OutputRef,
    Succeeded,
    failed_from_error,
    interrupted_from,
    output_refs,
)

__all__ = ["HistoryResult", "interpret_history", "terminal"]


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What GET /history/{prompt_id} says about one prompt.

    ``state`` is "unknown" for ``{}`` (pending, running, never seen, deleted or lost in a
    restart: only /queue tells these apart).
    """

    state: Literal["unknown", "success", "error", "interrupted"]
    outputs: tuple[OutputRef, ...] = ()
    error: Failed | None = None
    interrupted: Interrupted | None = None
    cached: tuple[str, ...] = ()
    completed: bool = False
    number: int | None = None

    @property
    def finished(self) -> bool:
        return self.state != "unknown"


def terminal(result: HistoryResult) -> Succeeded | Failed | Interrupted:
    """The terminal update a finished /history entry stands for."""
    if result.state == "success":
        return Succeeded()
    if result.state == "interrupted":
        return result.interrupted or Interrupted(None, None)
    return result.error or Failed(None, None, "unknown", "prompt failed")


def interpret_history(prompt_id: str, history_json: Any) -> HistoryResult:
    """Interpret a GET /history/{prompt_id} answer."""
    if not isinstance(history_json, Mapping):
        return HistoryResult("unknown")
    entry = history_json.get(prompt_id)
    if not isinstance(entry, Mapping):
        return HistoryResult("unknown")
    outputs: list[OutputRef] = []
    raw_outputs = entry.get("outputs")
    if isinstance(raw_outputs, Mapping):
        for node, out in raw_outputs.items():
            outputs.extend(output_refs(str(node), out))
    number: int | None = None
    prompt = entry.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        number = prompt[0]
    status = entry.get("status")
    status = status if isinstance(status, Mapping) else {}
    status_str = status.get("status_str")
    completed = bool(status.get("completed", False))
    error: Failed | None = None
    interrupted: Interrupted | None = None
    cached: list[str] = []
    for item in status.get("messages") or ():
        if not (isinstance(item, list | tuple) and len(item) == 2):
            continue
        mtype, data = item
        if not isinstance(data, Mapping):
            continue
        if mtype == "execution_error" and error is None:
            error = failed_from_error(data)
        elif mtype == "execution_interrupted" and interrupted is None:
            interrupted = interrupted_from(data)
        elif mtype == "execution_cached":
            cached.extend(str(n) for n in data.get("nodes") or ())
    state: Literal["success", "error", "interrupted"]
    if status_str == "success" or (status_str is None and completed):
        state = "success"
    elif interrupted is not None and error is None:
        state = "interrupted"
    else:
        state = "error"
        if error is None:
            error = Failed(None, None, "unknown", f"ComfyUI status {status_str!r}")
    return HistoryResult(
        state=state,
        outputs=tuple(outputs),
        error=error,
        interrupted=interrupted,
        cached=tuple(cached),
        completed=completed,
        number=number,
    )

"""The updates a prompt's event stream becomes, and the pure readers of ComfyUI payloads they
are built from (no I/O).

`tracker.PromptTracker` turns WebSocket frames into these; `history.interpret_history` reads
the same facts from GET /history. Facts are in shared/COMFYUI.md (observed on ComfyUI 0.3.64).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.agent.comfyui.seeds import apply_seeds

__all__ = [
    "Cached",
    "Done",
    "Executed",
    "Executing",
    "Failed",
    "Interrupted",
    "OutputRef",
    "Preview",
    "Progress",
    "Started",
    "Succeeded",
    "Text",
    "Update",
    "apply_seeds",  # lives in seeds.py; agent/runner.py still calls it as ev.apply_seeds
    "failed_from_error",
    "interrupted_from",
    "is_oom",
    "output_refs",
]

_OOM_MARKERS = ("outofmemoryerror", "allocation on device", "cuda out of memory", "out of memory")


# --------------------------------------------------------------------------------------------
# Updates


@dataclass(frozen=True, slots=True)
class OutputRef:
    """One file a node produced, as /view addresses it."""

    filename: str
    subfolder: str
    type: str  # "output" | "temp" | "input"; "text": a string the node showed, not a file
    node_id: str
    text: str | None = field(default=None, repr=False, compare=False)  # type "text" only

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.node_id, self.filename, self.subfolder, self.type)


@dataclass(frozen=True, slots=True)
class Started:
    prompt_id: str


@dataclass(frozen=True, slots=True)
class Cached:
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Executing:
    node: str
    node_type: str | None


@dataclass(frozen=True, slots=True)
class Progress:
    node: str
    value: float
    max: float
    fraction: float  # overall, 0..1, monotonic


@dataclass(frozen=True, slots=True)
class Executed:
    node: str
    outputs: tuple[OutputRef, ...]
    ui: Mapping[str, Any] = field(default_factory=dict, compare=False)  # raw `output` object


@dataclass(frozen=True, slots=True)
class Preview:
    image: bytes = field(repr=False)
    mime: str
    node: str | None


@dataclass(frozen=True, slots=True)
class Text:
    node: str
    text: str


@dataclass(frozen=True, slots=True)
class Succeeded:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    node_id: str | None
    node_type: str | None
    exception_type: str
    exception_message: str
    traceback: tuple[str, ...] = field(default=(), repr=False)
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Interrupted:
    node_id: str | None
    node_type: str | None


@dataclass(frozen=True, slots=True)
class Done:
    pass


Update = (
    Started
    | Cached
    | Executing
    | Progress
    | Executed
    | Preview
    | Text
    | Succeeded
    | Failed
    | Interrupted
    | Done
)


# --------------------------------------------------------------------------------------------
# Helpers


def is_oom(exception_type: str, exception_message: str) -> bool:
    """True for out-of-memory failures (worth retrying, maybe elsewhere)."""
    text = f"{exception_type}\n{exception_message}".lower()
    return any(marker in text for marker in _OOM_MARKERS)


def failed_from_error(data: Mapping[str, Any]) -> Failed:
    """A ``Failed`` from an ``execution_error`` payload (WebSocket or history message)."""
    exc_type = str(data.get("exception_type") or "")
    exc_msg = str(data.get("exception_message") or "")
    tb = data.get("traceback") or ()
    if isinstance(tb, str):
        tb = (tb,)
    node_id = data.get("node_id")
    return Failed(
        node_id=None if node_id is None else str(node_id),
        node_type=data.get("node_type"),
        exception_type=exc_type,
        exception_message=exc_msg,
        traceback=tuple(str(line) for line in tb),
        retryable=is_oom(exc_type, exc_msg),
    )


def interrupted_from(data: Mapping[str, Any]) -> Interrupted:
    node_id = data.get("node_id")
    return Interrupted(
        node_id=None if node_id is None else str(node_id), node_type=data.get("node_type")
    )


def output_refs(node_id: str, output: Any) -> tuple[OutputRef, ...]:
    """The results in one node's UI output: every file (``images``, ``gifs``, ``audio``,
    ``3d``, ... lists of {filename, subfolder, type}) and every string of ``text`` (PreviewAny
    and other text nodes), which becomes a ``type="text"`` result the agent stores as a file."""
    if not isinstance(output, Mapping):
        return ()
    refs: list[OutputRef] = []
    for key, value in output.items():
        if not isinstance(value, list):
            continue
        for index, item in enumerate(value):
            if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                refs.append(
                    OutputRef(
                        filename=item["filename"],
                        subfolder=str(item.get("subfolder") or ""),
                        type=str(item.get("type") or "output"),
                        node_id=str(node_id),
                    )
                )
            elif key == "text" and isinstance(item, str):
                refs.append(
                    OutputRef(
                        filename=f"text_{node_id}_{index}.txt",
                        subfolder="",
                        type="text",
                        node_id=str(node_id),
                        text=item,
                    )
                )
    return tuple(refs)

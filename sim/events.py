"""Pure builders of the WebSocket/history messages, in the recorded shapes (no I/O)."""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "ProgressTracker",
    "display_meta",
    "executed",
    "executing",
    "executing_done",
    "executing_reconnect",
    "format_value",
    "progress",
    "status",
]


def status(queue_remaining: int, sid: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return data


def executing(node_id: str, prompt_id: str) -> dict[str, Any]:
    return {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}


def executing_done(prompt_id: str) -> dict[str, Any]:
    return {"node": None, "prompt_id": prompt_id}


def executing_reconnect(node_id: str) -> dict[str, Any]:
    return {"node": node_id}


def executed(node_id: str, output: Any, prompt_id: str) -> dict[str, Any]:
    return {"node": node_id, "display_node": node_id, "output": output, "prompt_id": prompt_id}


def progress(value: int, maximum: int, prompt_id: str, node_id: str) -> dict[str, Any]:
    return {"value": value, "max": maximum, "prompt_id": prompt_id, "node": node_id}


def display_meta(node_id: str) -> dict[str, Any]:
    """A history `meta` entry for an output node."""
    return {
        "node_id": node_id,
        "display_node": node_id,
        "parent_node": None,
        "real_node_id": node_id,
    }


def format_value(value: Any) -> Any:
    """How ComfyUI shows an input value in execution_error.current_inputs."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


class ProgressTracker:
    """Cumulative `progress_state` of one prompt (ComfyUI's ProgressRegistry)."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self._nodes: dict[str, dict[str, Any]] = {}

    def _entry(self, node_id: str) -> dict[str, Any]:
        if node_id not in self._nodes:
            self._nodes[node_id] = {
                "value": 0,
                "max": 1,
                "state": "pending",
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
        return self._nodes[node_id]

    def start(self, node_id: str) -> dict[str, Any]:
        entry = self._entry(node_id)
        entry.update(state="running", value=0.0, max=1.0)
        return self.snapshot()

    def update(self, node_id: str, value: int, maximum: int) -> dict[str, Any]:
        entry = self._entry(node_id)
        entry.update(state="running", value=value, max=maximum)
        return self.snapshot()

    def finish(self, node_id: str) -> dict[str, Any]:
        entry = self._entry(node_id)
        entry.update(state="finished", value=entry["max"])
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        nodes = {k: copy.copy(v) for k, v in self._nodes.items() if v["state"] != "pending"}
        return {"prompt_id": self.prompt_id, "nodes": nodes}

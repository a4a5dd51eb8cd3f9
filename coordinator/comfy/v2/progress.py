"""A job's progress as Comfy API v2 reports it, made from ComfyUI's own frames (pure).

v2's `Progress` is a complete snapshot (node-count and sampler-step weighted): `value` in
[0, 1], `nodes_done` of `nodes_total`, the node running now and its class, its step of steps, and
a short `message` ("KSampler 21/50"). `Tracker.feed` takes each ComfyUI text frame the agent
forwards (`execution_cached`, `executing`, `progress`, `progress_state`, `executed`) and
`snapshot()` gives the snapshot; a retried attempt starts a fresh tracker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

__all__ = ["Tracker"]


@dataclass(slots=True)
class Tracker:
    """What is known of one attempt's progress. `classes` maps node id to class_type (the
    workflow's), `nodes_total` the nodes the prompt runs."""

    classes: Mapping[str, str]
    nodes_total: int
    done: set[str] = field(default_factory=set)
    current: str | None = None
    step: int | None = None
    steps: int | None = None
    finished: bool = False

    @classmethod
    def of(cls, workflow: Mapping[str, Any]) -> Tracker:
        classes = {
            str(k): str(v.get("class_type"))
            for k, v in workflow.items()
            if isinstance(v, Mapping) and isinstance(v.get("class_type"), str)
        }
        return cls(classes=classes, nodes_total=len(classes))

    def restart(self) -> Tracker:
        """A fresh tracker for the same workflow (a new attempt starts from nothing)."""
        return Tracker(classes=self.classes, nodes_total=len(self.classes))

    def feed(self, msg: Mapping[str, Any]) -> bool:
        """Take one ComfyUI text frame; True when the snapshot changed."""
        kind = msg.get("type")
        data = msg.get("data")
        if not isinstance(data, Mapping) or self.finished:
            return False
        if kind == "execution_cached":
            nodes = data.get("nodes")
            if isinstance(nodes, list) and nodes:
                self.done.update(str(n) for n in nodes)
                return True
            return False
        if kind == "executing":
            node = data.get("node")
            if self.current is not None:
                self.done.add(self.current)
            self.current = None if node is None else str(node)
            self.step = self.steps = None
            return True
        if kind == "executed":
            node = data.get("node")
            if node is not None:
                self.done.add(str(node))
            return node is not None
        if kind == "progress":
            return self._steps(data.get("node"), data.get("value"), data.get("max"))
        if kind == "progress_state":
            return self._state(data.get("nodes"))
        return False

    def _steps(self, node: Any, value: Any, maximum: Any) -> bool:
        if not _number(value) or not _number(maximum) or maximum <= 0:
            return False
        if node is not None:
            self.current = str(node)
        self.step, self.steps = int(value), int(maximum)
        return True

    def _state(self, nodes: Any) -> bool:
        if not isinstance(nodes, Mapping):
            return False
        for node_id, state in nodes.items():
            if not isinstance(state, Mapping):
                continue
            if state.get("state") == "finished":
                self.done.add(str(node_id))
            elif state.get("state") == "running":
                self.current = str(node_id)
                value, maximum = state.get("value"), state.get("max")
                if _number(value) and _number(maximum) and maximum > 1:
                    self.step, self.steps = int(value), int(maximum)
        self.nodes_total = max(self.nodes_total, len(nodes))
        return True

    def complete(self) -> None:
        """The prompt ended successfully: every node is done."""
        self.done.update(self.classes)
        self.current, self.step, self.steps = None, None, None
        self.finished = True

    def snapshot(self) -> dict[str, Any]:
        total = max(self.nodes_total, len(self.done))
        done = len(self.done - {self.current}) if self.current else len(self.done)
        fraction = 0.0
        if self.steps and self.step is not None:
            fraction = min(max(self.step / self.steps, 0.0), 1.0)
        value = 1.0 if self.finished else (done + fraction) / total if total else 0.0
        node_class = self.classes.get(self.current) if self.current is not None else None
        message = None
        if node_class is not None:
            message = f"{node_class} {self.step}/{self.steps}" if self.steps else node_class
        return {
            "value": min(max(value, 0.0), 1.0),
            "nodes_done": done,
            "nodes_total": total,
            "current_node": self.current,
            "current_node_class": node_class,
            "step": self.step,
            "steps": self.steps,
            "message": message,
        }


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

"""Pure interpretation of what ComfyUI's WebSocket says about ONE prompt (no I/O).

Facts this module is built on are in shared/COMFYUI.md (observed on ComfyUI 0.3.64):

* Execution events go only to the socket of the prompt's ``client_id`` and carry ``prompt_id``;
  several prompts may share one socket, so everything is filtered by prompt_id.
* ``executing`` with ``node: null`` for the prompt is always its last event (-> ``Done``).
* A fully cached prompt sends ``execution_cached`` listing every node, no ``executing(n)``, and
  still one ``executed`` for its output node.
* After a reconnect with the same clientId the server sends ``executing`` WITHOUT prompt_id for the
  node that is running. Such frames (and binary type 1 / type 3 frames, which carry no prompt_id)
  are attributed to the tracked prompt only while it is known to be running.
* An interrupted prompt is ``status_str: "error"`` in /history and only an
  ``execution_interrupted`` message tells it apart (``history.py``).

Overall fraction (``Progress.fraction``): every graph node has a weight, 1 for ordinary nodes and
``SAMPLER_WEIGHT`` for nodes whose class_type contains "Sampler" (they dominate run time). The
fraction is (weight of cached + finished nodes + weight of the running node x its step fraction) /
total weight, clamped to [0, 1] and never allowed to decrease; it is 1.0 once the prompt succeeded.
Nodes that ComfyUI never runs (not needed by any output) keep it below 1.0 until success.
A ``Progress`` update is emitted for every ``progress`` message and when a node finishes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from comfyfleet.agent.comfyui.events import (
    Cached,
    Done,
    Executed,
    Executing,
    Failed,
    Interrupted,
    OutputRef,
    Preview,
    Progress,
    Started,
    Succeeded,
    Text,
    Update,
    failed_from_error,
    interrupted_from,
    output_refs,
)
from comfyfleet.agent.comfyui.history import HistoryResult, terminal

__all__ = ["SAMPLER_WEIGHT", "PromptTracker"]

SAMPLER_WEIGHT = 8.0

# Binary WebSocket frame types (ComfyUI protocol.BinaryEventTypes).
_BIN_PREVIEW = 1
_BIN_TEXT = 3
_BIN_PREVIEW_META = 4
_PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}


def _node_weight(node: Any) -> float:
    class_type = node.get("class_type") if isinstance(node, Mapping) else None
    if isinstance(class_type, str) and "sampler" in class_type.lower():
        return SAMPLER_WEIGHT
    return 1.0


class PromptTracker:
    """Follows the WebSocket stream for one prompt_id and turns frames into ``Update``s.

    Pure: no I/O, no clock unless the caller passes ``now`` (then per-node timings are kept).
    Frames for other prompts produce nothing. After ``Done`` every frame produces nothing.
    """

    def __init__(self, prompt_id: str, graph: Mapping[str, Any] | None = None) -> None:
        self.prompt_id = prompt_id
        self.graph: Mapping[str, Any] = graph or {}
        self._weights = {str(k): _node_weight(v) for k, v in self.graph.items()}
        self._total = sum(self._weights.values())
        self.started = False
        self.running = False  # known to be the prompt ComfyUI executes now
        self.done = False
        self.cached: list[str] = []
        self.finished: list[str] = []  # nodes that ran and finished, in order
        self.current: str | None = None
        self._current_progress = 0.0
        self.outputs: list[OutputRef] = []
        self._output_keys: set[tuple[str, str, str, str]] = set()
        self.result: Succeeded | Failed | Interrupted | None = None
        self.fraction = 0.0
        self.timings: dict[str, float] = {}
        self._node_started_at: float | None = None

    # -- state the driver may set -----------------------------------------------------------

    def set_graph(self, graph: Mapping[str, Any]) -> None:
        """Learn the graph late (attach without it): node types and fraction weights."""
        self.graph = graph
        self._weights = {str(k): _node_weight(v) for k, v in graph.items()}
        self._total = sum(self._weights.values())
        self._bump_fraction()

    def set_running(self, running: bool) -> None:
        """The driver learnt from /queue whether this prompt is the one running now."""
        if self.done:
            return
        self.running = running
        if running:
            self.started = True

    @property
    def terminal(self) -> bool:
        return self.result is not None

    def node_type(self, node: str | None) -> str | None:
        if node is None:
            return None
        entry = self.graph.get(node)
        if isinstance(entry, Mapping):
            ct = entry.get("class_type")
            return ct if isinstance(ct, str) else None
        return None

    # -- text frames ----------------------------------------------------------------------

    def feed(self, msg: Mapping[str, Any], now: float | None = None) -> list[Update]:
        """Interpret one text frame (already JSON-decoded)."""
        if not self.owns(msg):
            return []
        handler = _TEXT_HANDLERS.get(msg["type"])
        if handler is None:
            return []
        return handler(self, msg["data"], now)

    def owns(self, msg: Any) -> bool:
        """Whether a text frame is about this prompt (as things stand before ``feed``)."""
        if self.done or not isinstance(msg, Mapping):
            return False
        data = msg.get("data")
        if not isinstance(msg.get("type"), str) or not isinstance(data, Mapping):
            return False
        if "prompt_id" in data:
            return bool(data.get("prompt_id") == self.prompt_id)
        # Frames without prompt_id (reconnect `executing`, very old servers): ours only while
        # this prompt is known to be the running one.
        return self.running

    def _on_start(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        if self.started and self.running:
            return []
        self.started = True
        self.running = True
        return [Started(self.prompt_id)]

    def _on_cached(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        nodes = data.get("nodes") or []
        new = [str(n) for n in nodes if str(n) not in self.cached]
        self.cached.extend(new)
        self.running = True
        self.started = True
        self._bump_fraction()
        return [Cached(tuple(str(n) for n in nodes))]

    def _on_executing(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        node = data.get("node")
        if node is None:
            if "prompt_id" not in data and not self.running:
                return []
            updates = self._finish_current(now)
            self.done = True
            self.running = False
            self.current = None
            if isinstance(self.result, Succeeded):
                self.fraction = 1.0
            updates.append(Done())
            return updates
        node = str(node)
        self.started = True
        self.running = True
        if node == self.current:
            return []  # repeated (reconnect) announcement of the running node
        updates = self._finish_current(now)
        self.current = node
        self._current_progress = 0.0
        self._node_started_at = now
        updates.append(Executing(node, self.node_type(node)))
        return updates

    def _on_progress(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        node = data.get("node")
        node = self.current if node is None else str(node)
        if node is None:
            return []
        try:
            value = float(data.get("value", 0))
            vmax = float(data.get("max", 0))
        except (TypeError, ValueError):
            return []
        if node == self.current and vmax > 0:
            self._current_progress = min(1.0, max(self._current_progress, value / vmax))
        self._bump_fraction()
        return [Progress(node, value, vmax, self.fraction)]

    def _on_progress_state(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        nodes = data.get("nodes")
        if not isinstance(nodes, Mapping):
            return []
        updates: list[Update] = []
        for key, st in nodes.items():
            if not isinstance(st, Mapping) or st.get("state") != "finished":
                continue
            node = str(st.get("node_id") or key)
            if node in self.finished or node in self.cached:
                continue
            updates.extend(self._mark_finished(node, now, st.get("value"), st.get("max")))
        return updates

    def _on_executed(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        node = data.get("node")
        if node is None:
            return []
        node = str(node)
        output = data.get("output")
        refs = output_refs(node, output)
        self._add_outputs(refs)
        self.started = True
        return [Executed(node, refs, dict(output) if isinstance(output, Mapping) else {})]

    def _on_success(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        if self.result is not None:
            return []
        updates = self._finish_current(now)
        self.result = Succeeded()
        self.fraction = 1.0
        updates.append(Succeeded())
        return updates

    def _on_error(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        return self._stopped(failed_from_error(data), now)

    def _on_interrupted(self, data: Mapping[str, Any], now: float | None) -> list[Update]:
        return self._stopped(interrupted_from(data), now)

    def _stopped(self, result: Failed | Interrupted, now: float | None) -> list[Update]:
        """The prompt ended before success; the running node did not finish."""
        if self.result is not None:
            return []
        self.result = result
        self._close_timing(now)
        self.current = None
        return [result]

    # -- binary frames --------------------------------------------------------------------

    def feed_binary(self, data: bytes, now: float | None = None) -> list[Update]:
        """Interpret one binary frame (big-endian u32 type header)."""
        if self.done or len(data) < 8:
            return []
        (btype,) = struct.unpack_from(">I", data, 0)
        if btype == _BIN_PREVIEW:
            if not self.running:
                return []
            (fmt,) = struct.unpack_from(">I", data, 4)
            mime = _PREVIEW_FORMATS.get(fmt, "application/octet-stream")
            return [Preview(bytes(data[8:]), mime, self.current)]
        if btype == _BIN_PREVIEW_META:
            (meta_len,) = struct.unpack_from(">I", data, 4)
            if 8 + meta_len > len(data):
                return []
            try:
                meta = json.loads(bytes(data[8 : 8 + meta_len]))
            except (ValueError, UnicodeDecodeError):
                return []
            if not isinstance(meta, Mapping):
                return []
            pid = meta.get("prompt_id")
            if pid is not None and pid != self.prompt_id:
                return []
            if pid is None and not self.running:
                return []
            node = meta.get("display_node_id") or meta.get("node_id") or self.current
            mime = str(meta.get("image_type") or "application/octet-stream")
            return [Preview(bytes(data[8 + meta_len :]), mime, None if node is None else str(node))]
        if btype == _BIN_TEXT:
            if not self.running:
                return []
            (id_len,) = struct.unpack_from(">I", data, 4)
            if 8 + id_len > len(data):
                return []
            try:
                node = bytes(data[8 : 8 + id_len]).decode("utf-8")
                text = bytes(data[8 + id_len :]).decode("utf-8", errors="replace")
            except UnicodeDecodeError:
                return []
            return [Text(node, text)]
        return []

    # -- history ----------------------------------------------------------------------------

    def finish_from_history(self, result: HistoryResult) -> list[Update]:
        """Close the stream from a finished /history entry (WebSocket missed the end).

        Emits ``Executed`` for outputs the socket did not deliver, the terminal update if not
        seen yet, and ``Done``. After ``Done`` (a cross-check) it only records what the socket
        missed and emits nothing: ``Done`` stays the last update.
        """
        if result.state == "unknown":
            return []
        if self.done:
            self._add_outputs(result.outputs)
            if self.result is None:
                self.result = terminal(result)
            return []
        updates: list[Update] = []
        for c in result.cached:
            if c not in self.cached:
                self.cached.append(c)
        by_node: dict[str, list[OutputRef]] = {}
        for ref in result.outputs:
            if ref.key not in self._output_keys:
                by_node.setdefault(ref.node_id, []).append(ref)
        for node, refs in by_node.items():
            self._add_outputs(refs)
            updates.append(Executed(node, tuple(refs), {}))
        if self.result is None:
            self.result = terminal(result)
            updates.append(self.result)
        if isinstance(self.result, Succeeded):
            self.fraction = 1.0
        self._close_timing(None)
        self.done = True
        self.running = False
        updates.append(Done())
        return updates

    # -- internals --------------------------------------------------------------------------

    def _add_outputs(self, refs: Iterable[OutputRef]) -> None:
        for ref in refs:
            if ref.key not in self._output_keys:
                self._output_keys.add(ref.key)
                self.outputs.append(ref)

    def _close_timing(self, now: float | None) -> None:
        if self.current is not None and now is not None and self._node_started_at is not None:
            self.timings.setdefault(self.current, max(0.0, now - self._node_started_at))
        self._node_started_at = None

    def _finish_current(self, now: float | None) -> list[Update]:
        if self.current is None or self.current in self.finished:
            return []
        return self._mark_finished(self.current, now, None, None)

    def _mark_finished(self, node: str, now: float | None, value: Any, vmax: Any) -> list[Update]:
        if node == self.current:
            self._close_timing(now)
            self._current_progress = 0.0
            self.current = None
        self.finished.append(node)
        self._bump_fraction()
        try:
            v = float(value) if value is not None else 1.0
            m = float(vmax) if vmax is not None else 1.0
        except (TypeError, ValueError):
            v, m = 1.0, 1.0
        return [Progress(node, v, m, self.fraction)]

    def _bump_fraction(self) -> None:
        if self._total <= 0:
            return
        done = {n for n in self.cached if n in self._weights} | {
            n for n in self.finished if n in self._weights
        }
        weight = sum(self._weights[n] for n in done)
        if self.current is not None and self.current not in done:
            weight += self._weights.get(self.current, 0.0) * self._current_progress
        new = min(1.0, max(0.0, weight / self._total))
        if new > self.fraction:
            self.fraction = new


_TEXT_HANDLERS = {
    "execution_start": PromptTracker._on_start,
    "execution_cached": PromptTracker._on_cached,
    "executing": PromptTracker._on_executing,
    "progress": PromptTracker._on_progress,
    "progress_state": PromptTracker._on_progress_state,
    "executed": PromptTracker._on_executed,
    "execution_success": PromptTracker._on_success,
    "execution_error": PromptTracker._on_error,
    "execution_interrupted": PromptTracker._on_interrupted,
}

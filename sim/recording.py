"""Frames in the recordings' format, and the normalisation used to compare them (pure).

The recordings (tests/fixtures/comfyui-traces) store each WebSocket frame as
`{"t": seconds, "kind": "text"|"binary", "msg": ...}`; a text frame's msg is the parsed JSON and a
binary frame's msg is `ws.decode_binary()`'s description. These helpers turn simulator frames into
the same records and reduce both sides to what must agree: event order, key sets, and the values
that do not depend on ids, clocks or image bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from comfyfleet.sim.ws import decode_binary

__all__ = [
    "collapse_node_runs",
    "event_types",
    "frame_record",
    "normalise",
    "shape",
    "text_types",
]

_TEMP_NAME = re.compile(r"_temp_[a-z]{5}_")
_BINARY_SIZES = {"total_len", "image_len", "metadata_len"}
SHAPE_ONLY = frozenset({"traceback", "exception_message", "current_inputs", "current_outputs"})
_NODE_RUN = ("progress_state", "executing", "progress_state")


def frame_record(payload: str | bytes, t: float = 0.0) -> dict[str, Any]:
    if isinstance(payload, bytes):
        return {"t": t, "kind": "binary", "msg": decode_binary(payload)}
    return {"t": t, "kind": "text", "msg": json.loads(payload)}


def event_types(frames: Iterable[Mapping[str, Any]]) -> list[str]:
    """`status`, `executing`, … for text frames; `binary:N` for binary ones."""
    out = []
    for frame in frames:
        if frame["kind"] == "binary":
            out.append(f"binary:{frame['msg']['binary_event']}")
        else:
            out.append(frame["msg"]["type"])
    return out


def text_types(frames: Iterable[Mapping[str, Any]]) -> list[str]:
    return [t for t in event_types(frames) if not t.startswith("binary:")]


def collapse_node_runs(types: Sequence[str]) -> list[str]:
    """Replace each run of complete node blocks (progress_state, executing, progress_state) with
    one `NODE+` token, so streams that ran a different number of nodes before an interrupt
    compare equal."""
    out: list[str] = []
    i = 0
    n = len(_NODE_RUN)
    while i < len(types):
        if tuple(types[i : i + n]) == _NODE_RUN:
            while tuple(types[i : i + n]) == _NODE_RUN:
                i += n
            if not out or out[-1] != "NODE+":
                out.append("NODE+")
            continue
        out.append(types[i])
        i += 1
    return out


def shape(value: Any) -> Any:
    """Key sets recursively; scalars become their JSON type; lists the set of element shapes."""
    if isinstance(value, Mapping):
        return {key: shape(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        shapes = {json.dumps(shape(v), sort_keys=True) for v in value}
        return ["list", sorted(shapes)]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str"


def normalise(value: Any, ids: Mapping[str, str] | None = None) -> Any:
    """Values with ids replaced by labels (`ids`: raw id -> label), timestamps zeroed, temp-file
    suffixes and binary sizes dropped, order-free lists (`executed`) sorted, and the fields that
    name the host's paths reduced to their shape."""
    ids = ids or {}

    def walk(v: Any, key: str | None = None) -> Any:
        if key in SHAPE_ONLY:
            return shape(v)
        if key == "timestamp":
            return 0
        if isinstance(v, Mapping):
            return {ids.get(k, k): walk(x, k) for k, x in v.items() if k not in _BINARY_SIZES}
        if isinstance(v, list | tuple):
            items = [walk(x) for x in v]
            if key == "executed":
                items = sorted(items)
            return items
        if isinstance(v, str):
            if v in ids:
                return ids[v]
            return _TEMP_NAME.sub("_temp_XXXXX_", v)
        return v

    return walk(value)

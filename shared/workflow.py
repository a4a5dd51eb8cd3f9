"""API-format workflow checks and the canonical workflow hash.

An API-format workflow maps node ids to nodes:
`{node_id: {"class_type": str, "inputs": {name: value | [node_id, int]}}}`.
Everything here is pure: it reads a parsed JSON value and returns or raises `InvalidInput`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from comfyfleet.shared.errors import InvalidInput

MAX_NODES = 10_000
MAX_DEPTH = 32  # nesting of lists/objects inside a node input or the metadata

UI_FORMAT_HINT = (
    "this looks like a ComfyUI UI-format workflow (it has 'nodes' and 'links' arrays); "
    "export it in API format instead: in ComfyUI enable dev mode options and use "
    "'Save (API Format)' / 'Export (API)'"
)


def is_link(value: Any) -> bool:
    """A ComfyUI link: `[source_node_id, output_index]`."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def validate_workflow(workflow: Any, field: str = "workflow") -> None:
    """Raise `InvalidInput` naming the field unless `workflow` is a well-formed API graph."""
    if not isinstance(workflow, Mapping):
        raise InvalidInput(field, "must be an object mapping node ids to nodes", "type")
    if "nodes" in workflow and "links" in workflow:
        raise InvalidInput(field, UI_FORMAT_HINT, "ui_format")
    if not workflow:
        raise InvalidInput(field, "must contain at least one node", "empty")
    if len(workflow) > MAX_NODES:
        raise InvalidInput(field, f"has {len(workflow)} nodes; at most {MAX_NODES}", "too_large")
    for node_id, node in workflow.items():
        where = f"{field}.{node_id}"
        if not isinstance(node, Mapping):
            raise InvalidInput(where, "node must be an object with class_type and inputs", "type")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise InvalidInput(f"{where}.class_type", "must be a non-empty string", "missing")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise InvalidInput(f"{where}.inputs", "must be an object", "type")
        for name, value in inputs.items():
            if is_link(value):
                source = str(value[0])
                if source not in workflow:
                    raise InvalidInput(
                        f"{where}.inputs.{name}",
                        f"links to node {source!r}, which is not in the workflow",
                        "bad_link",
                    )
                if value[1] < 0:
                    raise InvalidInput(
                        f"{where}.inputs.{name}", f"output index {value[1]} is negative", "bad_link"
                    )
        check_depth(inputs, f"{where}.inputs", MAX_DEPTH - 2)
    cycle = find_cycle(workflow)
    if cycle:
        raise InvalidInput(field, f"links form a cycle: {' -> '.join(cycle)}", "cycle")


def check_depth(value: Any, field: str, limit: int = MAX_DEPTH) -> None:
    """Raise `InvalidInput` if lists/objects nest deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            raise InvalidInput(field, f"nests deeper than {limit} levels", "too_deep")
        stack.extend((c, depth + 1) for c in children)


def links_of(node: Mapping[str, Any]) -> list[str]:
    inputs = node.get("inputs", {})
    return [str(v[0]) for v in inputs.values() if is_link(v)]


def find_cycle(workflow: Mapping[str, Any]) -> list[str] | None:
    """A cycle of node ids if the link graph has one (iterative DFS), else None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(workflow, white)
    for start in workflow:
        if colour[start] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(start, links_of(workflow[start]))]
        colour[start] = grey
        path = [start]
        while stack:
            node, pending = stack[-1]
            if not pending:
                colour[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = pending.pop()
            if nxt not in colour:
                continue
            if colour[nxt] == grey:
                return path[path.index(nxt) :] + [nxt]
            if colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append((nxt, links_of(workflow[nxt])))
    return None


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: equal graphs give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def workflow_hash(workflow: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the workflow, independent of key order."""
    return hashlib.sha256(canonical_json(workflow)).hexdigest()

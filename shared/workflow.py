"""API-format workflow checks and the canonical workflow hash.

An API-format workflow maps node ids to nodes:
`{node_id: {"class_type": str, "inputs": {name: value | [node_id, int]}}}`. Any two-element
list whose first element names a node is a link (ComfyUI follows it as one), so its second
element must be an integer output index.
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
    """A well-formed ComfyUI link: `[source_node_id, output_index]`, the index an integer."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and _is_node_ref(value[0])
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _is_node_ref(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def link_source(value: Any, workflow: Mapping[str, Any]) -> str | None:
    """The node id an input value links to, or None when it is a literal value.

    A value is a link when it has a link's shape (`[id, int]`), or when it is any two-element
    list whose first element names a node of the workflow: ComfyUI follows that as a link
    whatever the second element is, so `["2", "zero"]` is a broken link, not a literal."""
    if not isinstance(value, list) or len(value) != 2 or not _is_node_ref(value[0]):
        return None
    source = str(value[0])
    return source if is_link(value) or source in workflow else None


def check_link(value: list[Any], workflow: Mapping[str, Any], field: str) -> None:
    """Raise `InvalidInput` unless a link names a node of the workflow and an output of it
    (a non-negative integer index; which outputs a node class has is known only to ComfyUI)."""
    source = str(value[0])
    if source not in workflow:
        raise InvalidInput(
            field, f"links to node {source!r}, which is not in the workflow", "bad_link"
        )
    index = value[1]
    if not isinstance(index, int) or isinstance(index, bool):
        raise InvalidInput(
            field,
            f"links to node {source!r} with output index {index!r}; "
            "the output index must be an integer",
            "bad_link",
        )
    if index < 0:
        raise InvalidInput(field, f"output index {index} is negative", "bad_link")


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
            if link_source(value, workflow) is not None:
                check_link(value, workflow, f"{where}.inputs.{name}")
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

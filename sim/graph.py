"""Pure graph logic for a validated prompt: links, cache keys and execution order."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from comfyfleet.sim.nodes import NodeSpec

__all__ = ["cache_keys", "execution_order", "is_link", "upstream"]


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def upstream(node: Mapping[str, Any]) -> list[str]:
    """Ids of the nodes this node reads from, in input order."""
    return [v[0] for v in node.get("inputs", {}).values() if is_link(v)]


def cache_keys(
    prompt: Mapping[str, Any],
    catalogue: Mapping[str, NodeSpec],
    is_changed: Callable[[str, Mapping[str, Any]], str | None],
) -> dict[str, str]:
    """Input signature of every node, like ComfyUI's CacheKeySetInputSignature.

    The key covers the class, the literal inputs, the keys of linked nodes (with the output slot)
    and `is_changed` (LoadImage: the file's hash). Nodes with a hidden UNIQUE_ID also include
    their id. Identical keys mean the cached output can be reused, across prompts.
    """
    keys: dict[str, str] = {}

    def key_of(node_id: str, active: frozenset[str]) -> str:
        if node_id in keys:
            return keys[node_id]
        if node_id in active:
            raise ValueError("Dependency cycle detected")
        node = prompt[node_id]
        spec = catalogue[node["class_type"]]
        parts: list[Any] = [node["class_type"], is_changed(node_id, node)]
        if spec.uses_unique_id:
            parts.append(["id", node_id])
        for name in sorted(node.get("inputs", {})):
            value = node["inputs"][name]
            if is_link(value):
                parts.append([name, "link", key_of(value[0], active | {node_id}), value[1]])
            else:
                parts.append([name, value])
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
        keys[node_id] = digest.hexdigest()
        return keys[node_id]

    for node_id in prompt:
        key_of(node_id, frozenset())
    return keys


def execution_order(
    prompt: Mapping[str, Any],
    outputs: Iterable[str],
    is_cached: Callable[[str], bool],
) -> list[str]:
    """Nodes to visit, dependencies first, like ComfyUI's ExecutionList.

    Output nodes are always visited (a cached one only re-sends its `executed`); an upstream node
    is visited only when it is not cached.
    """
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for up in upstream(prompt[node_id]):
            if not is_cached(up):
                visit(up)
        order.append(node_id)

    for out in outputs:
        visit(out)
    return order

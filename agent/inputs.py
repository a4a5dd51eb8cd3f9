"""Input files of a job: uploaded to the instance's ComfyUI input folder before the prompt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfyfleet.agent.comfyui.client import ComfyUIClient


def rename_inputs(graph: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """The graph with every string input equal to an uploaded file's name replaced by the name
    ComfyUI stored it under (`x (1).png` when different bytes already had that name)."""
    if not renamed:
        return dict(graph)
    out: dict[str, Any] = {}
    for node_id, node in graph.items():
        if isinstance(node, Mapping) and isinstance(node.get("inputs"), Mapping):
            inputs = {
                k: renamed.get(v, v) if isinstance(v, str) else v for k, v in node["inputs"].items()
            }
            out[node_id] = {**node, "inputs": inputs}
        else:
            out[node_id] = node
    return out


async def upload_inputs(client: ComfyUIClient, inputs: Mapping[str, bytes]) -> dict[str, str]:
    """Upload each file; returns {asked name: stored name} for the names ComfyUI changed."""
    renamed: dict[str, str] = {}
    for name, data in inputs.items():
        answer = await client.upload_image(data, name)
        stored = answer.get("name")
        sub = answer.get("subfolder") or ""
        if isinstance(stored, str) and stored:
            full = f"{sub}/{stored}" if sub else stored
            if full != name:
                renamed[name] = full
    return renamed

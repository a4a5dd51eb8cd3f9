"""The shape of a workflow: what it runs and loads, not the values it runs with.

Two workflows with the same shape hash use the same node classes wired the same way and load the
same model files; they differ only in widget values (seeds, prompt text, sizes, colours, steps).
A ComfyUI that just ran one of them has the other's models and most of its graph warm, which is
what placement affinity rewards (DESIGN.md §3). Pure functions over a parsed API-format graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from comfyfleet.shared.workflow import canonical_json, is_link

# Inputs that name a model file, by the folder ComfyUI looks them up in.
MODEL_INPUTS: Mapping[str, str] = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "control_net_name": "controlnet",
    "model_name": "upscale_models",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "clip_vision_name": "clip_vision",
    "hypernetwork_name": "hypernetworks",
    "upscale_model": "upscale_models",
}


def _nodes(workflow: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [
        (str(node_id), node)
        for node_id, node in workflow.items()
        if isinstance(node, Mapping) and isinstance(node.get("class_type"), str)
    ]


def _inputs(node: Mapping[str, Any]) -> Mapping[str, Any]:
    inputs = node.get("inputs", {})
    return inputs if isinstance(inputs, Mapping) else {}


def model_refs(workflow: Mapping[str, Any]) -> tuple[str, ...]:
    """Model file names the workflow loads (sorted, unique): values of known model inputs."""
    found: set[str] = set()
    for _, node in _nodes(workflow):
        for name, value in _inputs(node).items():
            if name in MODEL_INPUTS and isinstance(value, str) and value:
                found.add(value)
    return tuple(sorted(found))


def node_classes(workflow: Mapping[str, Any]) -> tuple[str, ...]:
    """Node class types the workflow uses (sorted, unique)."""
    return tuple(sorted({node["class_type"] for _, node in _nodes(workflow)}))


def shape(workflow: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a workflow the shape hash covers: per node its class type, its links
    (input name -> [source node, output index]) and its model file references."""
    out: dict[str, Any] = {}
    for node_id, node in _nodes(workflow):
        links: dict[str, list[Any]] = {}
        models: dict[str, str] = {}
        for name, value in _inputs(node).items():
            if is_link(value):
                links[str(name)] = [str(value[0]), value[1]]
            elif name in MODEL_INPUTS and isinstance(value, str):
                models[str(name)] = value
        out[node_id] = {"class_type": node["class_type"], "links": links, "models": models}
    return out


def shape_hash(workflow: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `shape(workflow)`, prefixed `s:` so it is never confused
    with the full workflow hash."""
    return "s:" + hashlib.sha256(canonical_json(shape(workflow))).hexdigest()[:32]

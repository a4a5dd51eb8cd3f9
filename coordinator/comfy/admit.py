"""A prompt on its way to becoming a job: validated against the fleet's node definitions, and
the uploaded files it names made into job inputs. Shared by `POST /prompt` and
`POST /api/v2/jobs`.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.coordinator.comfy.catalog import upload_choices
from comfyfleet.coordinator.comfy.files import UploadStore
from comfyfleet.coordinator.comfy.port import FleetView
from comfyfleet.coordinator.comfy.prompts import carry_name, upload_refs
from comfyfleet.shared.comfy_validation import Verdict, validate
from comfyfleet.shared.errors import InvalidInput

__all__ = ["Admitted", "admit"]


@dataclass(frozen=True, slots=True)
class Admitted:
    """A valid prompt: the graph as it will run, its output nodes, ComfyUI's `node_errors`
    (of outputs it dropped) and the files it carries (name -> base64). `refused` holds
    ComfyUI's 400 verdict instead when the prompt is not valid."""

    workflow: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    node_errors: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    refused: Verdict | None = None


async def admit(
    fleet: FleetView,
    uploads: UploadStore,
    who: str,
    prompt: Any,
    targets: list[str] | None,
    extra: Mapping[str, Path] | None = None,
) -> Admitted:
    """Validate `prompt` (when some agent has described its ComfyUI; otherwise the job waits,
    as on /v1/jobs) and carry its files. `extra` names more files the prompt may name by
    value (v2's resolved asset references), carried as they are."""
    extra = extra or {}
    agent_files = upload_choices(fleet.object_info)

    def file_exists(value: str) -> bool:
        return value in extra or value in agent_files or uploads.named(who, value) is not None

    if fleet.object_info:
        verdict = validate(prompt, fleet.object_info, file_exists, targets)
        if not verdict.ok:
            return Admitted(refused=verdict)
        workflow, outputs, node_errors = verdict.prompt, verdict.outputs, verdict.node_errors
    else:
        if not isinstance(prompt, dict):
            raise InvalidInput("prompt", "must be an object mapping node ids to nodes")
        workflow, outputs, node_errors = dict(prompt), [], {}
    inputs = await asyncio.to_thread(_carry, uploads, who, workflow, fleet.object_info, extra)
    return Admitted(workflow, outputs, node_errors, inputs)


def _carry(
    uploads: UploadStore,
    who: str,
    workflow: dict[str, Any],
    defs: Mapping[str, Any],
    extra: Mapping[str, Path],
) -> dict[str, str]:
    """The files the prompt names, as job inputs (name -> base64); the workflow is changed to
    the plain names they travel under. Uploads are found where an input is declared
    `image_upload`; `extra` files wherever a value names them."""
    inputs: dict[str, str] = {}
    for node_id, name, value in upload_refs(workflow, defs):
        path = uploads.named(who, value)
        if path is None or value in extra:
            continue  # a file the agents have themselves, or one of `extra`
        _put(workflow, inputs, node_id, name, value, path)
    if extra:
        for node_id, node in list(workflow.items()):
            values = node.get("inputs") if isinstance(node, dict) else None
            for name, value in (values or {}).items():
                if isinstance(value, str) and value in extra:
                    _put(workflow, inputs, node_id, name, value, extra[value])
    return inputs


def _put(
    workflow: dict[str, Any],
    inputs: dict[str, str],
    node_id: str,
    name: str,
    value: str,
    path: Path,
) -> None:
    key = carry_name(value)
    if key not in inputs:
        inputs[key] = base64.b64encode(path.read_bytes()).decode()
    node = workflow[node_id]
    workflow[node_id] = {**node, "inputs": {**node["inputs"], name: key}}

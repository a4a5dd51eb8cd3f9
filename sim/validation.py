"""Prompt validation of the simulator: ComfyUI 0.3.64's `execution.validate_prompt`, run by the
one implementation the coordinator's facade uses too (`shared/comfy_validation.py`) over the
`/object_info` entries of this simulated install's node catalogue.

The error bodies are the recorded ones (tests/fixtures/comfyui-traces/06_validation_errors.json).
LoadImage's `VALIDATE_INPUTS` (its `image_upload` input must name a file) asks `image_exists`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from comfyfleet.shared.comfy_validation import Verdict, no_prompt, validate
from comfyfleet.sim.nodes import CatalogueContext, NodeSpec, node_info

__all__ = ["Validation", "ValidationContext", "no_prompt_error", "validate_prompt"]

Validation: TypeAlias = Verdict  # ok, error, outputs, node_errors, prompt (INT/FLOAT/... converted)


@dataclass(frozen=True)
class ValidationContext:
    catalogue: Mapping[str, NodeSpec]
    nodes: CatalogueContext = field(default_factory=CatalogueContext)
    image_exists: Callable[[str], bool] = lambda _name: False


def no_prompt_error() -> dict[str, Any]:
    error: dict[str, Any] = no_prompt()["error"]
    return error


def _defs(prompt: Any, ctx: ValidationContext) -> dict[str, Any]:
    """The `/object_info` entries of the classes the prompt names (file lists filled now)."""
    if not isinstance(prompt, dict):
        return {}
    names = {n.get("class_type") for n in prompt.values() if isinstance(n, dict)}
    return {
        name: node_info(ctx.catalogue[name], ctx.nodes)
        for name in names
        if isinstance(name, str) and name in ctx.catalogue
    }


def validate_prompt(
    raw_prompt: Any,
    ctx: ValidationContext,
    partial_targets: list[str] | None = None,
) -> Validation:
    return validate(raw_prompt, _defs(raw_prompt, ctx), ctx.image_exists, partial_targets)

"""A ComfyUI `POST /prompt` body, and the fleet job it becomes (pure).

A prompt is a job. The client's `prompt_id` (or a new UUID) is kept in the job's metadata and
names the job through `job_id_for(tenant, prompt_id)`: a fixed mapping, so `/history/{id}` finds
the job in the store after any restart, two tenants may choose the same prompt_id, and a prompt
posted twice with one id is the same job (answered again, run once).

What ComfyUI keeps beside the graph (`number`, `client_id`, `extra_data`, the output nodes to
run) rides in `metadata["comfy"]`. Fleet options a ComfyUI client cannot express otherwise may be
given in `extra_data["comfyfleet"]` (`resources`, `constraints`, `priority`, `timeout_s`,
`max_retries`), the same fields as `POST /v1/jobs`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import Constraints, JobSpec, Resources

__all__ = [
    "COMFY",
    "ComfyMeta",
    "PromptRequest",
    "SENSITIVE_EXTRA_DATA",
    "job_id_for",
    "meta_of",
    "parse_prompt",
    "to_spec",
    "upload_refs",
    "agent_extra_data",
    "carry_name",
]

COMFY = "comfy"  # the metadata key of a job that came through the facade
FRONT_PRIORITY = 1  # `front: true` puts the job ahead of the default priority 0
# ComfyUI drops these from extra_data before it keeps a prompt in history (execution.py)
SENSITIVE_EXTRA_DATA = ("auth_token_comfy_org", "api_key_comfy_org")
MAX_PROMPT_ID = 200


class FleetOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`extra_data["comfyfleet"]`: what `POST /v1/jobs` takes beside the workflow."""

    resources: Resources = Resources()
    constraints: Constraints = Constraints()
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)] = 3600.0
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 2


@dataclass(frozen=True, slots=True)
class PromptRequest:
    prompt: Any
    prompt_id: str
    client_id: str | None
    extra_data: dict[str, Any]
    number: int | float
    front: bool
    partial_targets: list[str] | None


@dataclass(frozen=True, slots=True)
class ComfyMeta:
    """What a facade job remembers of its prompt (from `metadata["comfy"]`)."""

    prompt_id: str
    client_id: str | None
    number: int | float
    extra_data: dict[str, Any]
    outputs: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "client_id": self.client_id,
            "number": self.number,
            "extra_data": self.extra_data,
            "outputs": self.outputs,
        }


def job_id_for(tenant: str, prompt_id: str) -> str:
    """The fleet job id of a tenant's prompt (fits the protocol's id pattern)."""
    digest = hashlib.sha256(f"{tenant}\x00{prompt_id}".encode()).hexdigest()
    return f"comfy-{digest[:32]}"


def parse_prompt(body: Any, next_number: int) -> PromptRequest:
    """ComfyUI's reading of the body: `number` given wins (a float); otherwise the server's
    counter, negated for `front`. Raises InvalidInput(field) for what ComfyUI would fail on
    with a 500 (the facade answers 400 instead). A body without `prompt` is the caller's
    `no_prompt` answer, so it is not checked here."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    front = bool(body.get("front", False))
    number: int | float
    if "number" in body:
        try:
            number = float(body["number"])
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput("number", "must be a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidInput("number", "must be a finite number")
    else:
        number = -next_number if front else next_number
    raw_id = body.get("prompt_id")
    prompt_id = str(uuid.uuid4()) if raw_id is None else str(raw_id)
    if not prompt_id or len(prompt_id) > MAX_PROMPT_ID:
        raise InvalidInput("prompt_id", f"must be 1..{MAX_PROMPT_ID} characters")
    extra = body.get("extra_data", {})
    if not isinstance(extra, dict):
        raise InvalidInput("extra_data", "must be an object")
    extra = dict(extra)
    client_id = body.get("client_id")
    if client_id is not None:
        client_id = str(client_id)
        extra["client_id"] = client_id
    targets = body.get("partial_execution_targets")
    if targets is not None and not (
        isinstance(targets, list) and all(isinstance(t, str) for t in targets)
    ):
        raise InvalidInput("partial_execution_targets", "must be a list of node ids")
    return PromptRequest(body.get("prompt"), prompt_id, client_id, extra, number, front, targets)


def to_spec(
    req: PromptRequest,
    workflow: dict[str, Any],
    outputs: list[str],
    inputs: Mapping[str, str],
) -> JobSpec:
    """The job for a validated prompt: `workflow` is the prompt as validation converted it,
    `inputs` the uploaded files it names (name -> base64)."""
    raw = req.extra_data.get("comfyfleet")
    try:
        options = msgspec.convert(raw or {}, FleetOptions)
    except msgspec.ValidationError as exc:
        raise InvalidInput("extra_data.comfyfleet", str(exc)) from None
    priority = options.priority
    if priority is None:
        priority = FRONT_PRIORITY if req.front else 0
    meta = ComfyMeta(req.prompt_id, req.client_id, req.number, kept_extra(req.extra_data), outputs)
    return JobSpec(
        workflow=workflow,
        resources=options.resources,
        constraints=options.constraints,
        priority=priority,
        timeout_s=options.timeout_s,
        max_retries=options.max_retries,
        metadata={COMFY: meta.as_dict()},
        inputs=dict(inputs),
    )


def kept_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    """extra_data as history shows it (ComfyUI drops the sensitive keys)."""
    return {k: v for k, v in extra.items() if k not in SENSITIVE_EXTRA_DATA}


def meta_of(metadata: Mapping[str, Any]) -> ComfyMeta | None:
    """The prompt a job came from, or None for a job that did not come through the facade."""
    raw = metadata.get(COMFY)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("prompt_id"), str):
        return None
    client = raw.get("client_id")
    number = raw.get("number")
    extra = raw.get("extra_data")
    outputs = raw.get("outputs")
    return ComfyMeta(
        prompt_id=raw["prompt_id"],
        client_id=client if isinstance(client, str) else None,
        number=number if isinstance(number, int | float) else 0,
        extra_data=dict(extra) if isinstance(extra, Mapping) else {},
        outputs=[str(o) for o in outputs] if isinstance(outputs, list) else [],
    )


def agent_extra_data(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt's extra_data as the agent hands it to its ComfyUI: ComfyUI's own keys only
    (not the client's id, which the agent replaces by its own, nor the fleet's options)."""
    meta = meta_of(metadata)
    if meta is None:
        return {}
    return {k: v for k, v in meta.extra_data.items() if k not in ("client_id", "comfyfleet")}


def upload_refs(prompt: Mapping[str, Any], defs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(node id, input name, file name) of each input declared `image_upload` (LoadImage,
    LoadImageMask) that holds a file name."""
    refs = []
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("inputs"), Mapping):
            continue
        class_type = node.get("class_type")
        entry = defs.get(class_type) if isinstance(class_type, str) else None
        declared = entry.get("input") if isinstance(entry, Mapping) else None
        if not isinstance(declared, Mapping):
            continue
        for section in declared.values():
            if not isinstance(section, Mapping):
                continue
            for name, spec in section.items():
                extra = spec[1] if isinstance(spec, list) and len(spec) > 1 else None
                value = node["inputs"].get(name)
                upload = isinstance(extra, Mapping) and extra.get("image_upload") is True
                if upload and isinstance(value, str):
                    refs.append((str(node_id), name, value))
    return refs


def carry_name(value: str) -> str:
    """The plain file name an upload travels under to the agent's ComfyUI (its input folder,
    no subfolder): `sub/x.png [input]` -> `sub_x.png`; a plain name stays as it is."""
    if value.endswith(" [input]"):
        value = value[: -len(" [input]")]
    flat = value.replace("/", "_").replace("\\", "_")
    if len(flat) <= 120:
        return flat
    _, dot, ext = flat.rpartition(".")
    digest = hashlib.sha256(value.encode()).hexdigest()[:24]
    return f"upload-{digest}.{ext[:16]}" if dot else f"upload-{digest}"

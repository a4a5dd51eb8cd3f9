"""Could any registered agent ever run a job? (the 422 at submission) — pure.

One rule for submission: what no registered agent can ever satisfy is refused with a 422 naming
it: model files (named by the workflow or by `constraints.models`), node classes, and the kind
of slot (`resources.gpus` 1 needs a ComfyUI instance on a GPU, 0 a CPU-only one). What some
registered agent could satisfy, even one that is busy, draining or lost now, is accepted and
waits in the queue with a pending reason from the scheduler. An agent that has not said what it
has (no inventory, no instances) could satisfy anything; with no agent registered, every job
waits for one.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from comfyfleet.coordinator.errors import Unprocessable
from comfyfleet.coordinator.fleet import AgentState
from comfyfleet.coordinator.model import WorkflowFacts
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import JobSpec

_INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()-]{0,127}$")
SLOT_KIND = {1: "a GPU", 0: "a CPU-only"}  # by resources.gpus


@dataclass(frozen=True, slots=True)
class Need:
    """What a job needs of the agent that runs it, as far as submission can tell."""

    gpus: int
    models: tuple[str, ...] = ()  # model files the workflow names
    constraint_models: tuple[str, ...] = ()  # constraints.models
    node_classes: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: JobSpec, facts: WorkflowFacts) -> Need:
        return cls(
            gpus=spec.resources.gpus,
            models=facts.model_refs,
            constraint_models=tuple(spec.constraints.models),
            node_classes=facts.node_classes,
        )


@dataclass(frozen=True, slots=True)
class Offer:
    """What one registered agent has: None where it has not said."""

    gpus: frozenset[int] | None  # slot kinds of its ComfyUI instances (1 GPU, 0 CPU-only)
    models: frozenset[str] | None
    node_classes: frozenset[str] | None

    @classmethod
    def of(cls, agent: AgentState) -> Offer:
        kinds = frozenset(0 if i.gpu_index is None else 1 for i in agent.instances)
        known = agent.node_classes is not None  # an agent that reported no inventory
        return cls(
            gpus=kinds or None,
            models=agent.models if known else None,
            node_classes=agent.node_classes,
        )


@dataclass(frozen=True, slots=True)
class Gap:
    field: str  # the input to change: workflow, constraints.models or resources.gpus
    message: str


def _lacks(need: Need, offer: Offer) -> list[tuple[str, str]]:
    """(field, item) the agent lacks; nothing for what it has not said."""
    out: list[tuple[str, str]] = []
    if offer.models is not None:
        out += [("workflow", m) for m in need.models if m not in offer.models]
        out += [("constraints.models", m) for m in need.constraint_models if m not in offer.models]
    if offer.node_classes is not None:
        out += [("node_classes", c) for c in need.node_classes if c not in offer.node_classes]
    if offer.gpus is not None and need.gpus not in offer.gpus:
        out.append(("resources.gpus", SLOT_KIND[need.gpus]))
    return out


def _describe(items: Iterable[tuple[str, str]], gpus: int, nowhere: bool) -> str:
    groups: dict[str, list[str]] = {}
    for where, item in items:
        groups.setdefault(where, []).append(item)
    parts = []
    if "workflow" in groups:
        parts.append(f"model files {', '.join(sorted(set(groups['workflow'])))}")
    if "constraints.models" in groups:
        named = ", ".join(sorted(set(groups["constraints.models"])))
        parts.append(f"model files {named} (constraints.models)")
    if "node_classes" in groups:
        parts.append(f"node classes {', '.join(sorted(set(groups['node_classes'])))}")
    if "resources.gpus" in groups:
        hint = f"resources.gpus {gpus}"
        if nowhere:
            hint += (
                "; every ComfyUI instance in the fleet is CPU-only: submit with resources.gpus 0"
                if gpus
                else "; every ComfyUI instance in the fleet has a GPU: submit with resources.gpus 1"
            )
        parts.append(f"{SLOT_KIND[gpus]} ComfyUI instance ({hint})")
    return " and ".join(parts)


def fleet_gap(need: Need, offers: Iterable[Offer]) -> Gap | None:
    """None when some registered agent could run the job (or none is registered yet); else
    what is missing: the items no agent has, or, when each exists somewhere but no one agent
    has them all, every item the job needs."""
    lacks = [_lacks(need, o) for o in offers]
    if not lacks or any(not missing for missing in lacks):
        return None
    everywhere = [x for x in dict.fromkeys(lacks[0]) if all(x in missing for missing in lacks)]
    nowhere = bool(everywhere)
    lead = "no agent in the fleet has"
    if not nowhere:
        everywhere = list(dict.fromkeys(x for missing in lacks for x in missing))
        lead = "no agent in the fleet has all of"
    fields = {where for where, _ in everywhere}
    field = next(
        f
        for f in ("workflow", "node_classes", "constraints.models", "resources.gpus")
        if f in fields
    )
    return Gap(
        "workflow" if field == "node_classes" else field,
        f"no agent can run this job: {lead} {_describe(everywhere, need.gpus, nowhere)}",
    )


def check_fleet_can_run(spec: JobSpec, facts: WorkflowFacts, agents: Iterable[AgentState]) -> None:
    """Raise `Unprocessable` (422) naming what no registered agent has (see `fleet_gap`)."""
    gap = fleet_gap(Need.of(spec, facts), [Offer.of(a) for a in agents])
    if gap is not None:
        raise Unprocessable(gap.message, gap.field)


def decode_inputs(inputs: Mapping[str, str], max_bytes: int) -> dict[str, bytes]:
    """Input files from a job spec: safe names, valid base64, at most `max_bytes` in all."""
    out: dict[str, bytes] = {}
    total = 0
    for name, b64 in inputs.items():
        field = f"inputs.{name}"
        if not _INPUT_NAME.match(name) or ".." in name:
            raise InvalidInput(
                field,
                "file name must be 1-128 letters, digits, '._ ()-' and "
                "start with a letter or digit",
                "bad_name",
            )
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                field, "must be base64 (RFC 4648, no line breaks)", "bad_base64"
            ) from None
        total += len(data)
        if total > max_bytes:
            raise InvalidInput(
                "inputs", f"input files exceed {max_bytes} bytes in all", "too_large"
            )
        out[name] = data
    return out

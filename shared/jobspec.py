"""What a client submits: the job specification, defined once with its bounds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
MAX_VRAM_MB = 4_000_000  # 4 TB: anything above is a typo, not a GPU
MAX_RAM_MB = 64_000_000
MAX_TIMEOUT_S = 7 * 86_400
MAX_WEBHOOK_URL = 2048
WebhookEvent = Literal["running", "completed", "failed", "cancelled"]
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed", "failed", "cancelled")


class Resources(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    gpus: Annotated[int, msgspec.Meta(ge=0, le=1, description="0 = CPU slot; 1 = one GPU")] = 1
    vram_mb: Annotated[int, msgspec.Meta(ge=0, le=MAX_VRAM_MB)] | None = None
    ram_mb: Annotated[int, msgspec.Meta(ge=0, le=MAX_RAM_MB)] = 0
    cpu: Annotated[float, msgspec.Meta(ge=0, le=4096)] = 0.0


class Constraints(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    labels: dict[
        Annotated[str, msgspec.Meta(min_length=1, max_length=64)],
        Annotated[str, msgspec.Meta(max_length=256)],
    ] = {}
    gpu_name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    models: list[Annotated[str, msgspec.Meta(min_length=1, max_length=512)]] = []


class JobSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    workflow: dict[str, Any]
    resources: Resources = Resources()
    constraints: Constraints = Constraints()
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)] = 3600.0
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 2
    metadata: dict[Annotated[str, msgspec.Meta(max_length=128)], Any] = {}
    # input files (e.g. images for LoadImage): file name -> base64 content; the agent uploads
    # them to its ComfyUI's input folder before the prompt and the workflow names them
    inputs: dict[Annotated[str, msgspec.Meta(min_length=1, max_length=128)], str] = {}
    # a URL told of this job's events (signed per Standard Webhooks; the coordinator checks the
    # address); which events: by default the three terminal ones
    webhook_url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_WEBHOOK_URL)] | None = (
        None
    )
    webhook_events: Annotated[list[WebhookEvent], msgspec.Meta(min_length=1, max_length=4)] = (
        msgspec.field(default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS))
    )

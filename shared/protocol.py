"""Agent <-> coordinator messages (DESIGN.md §4), each defined once, msgpack on the wire.

Every message about a job carries (job_id, attempt): the attempt is the fencing token.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from comfyfleet.shared import names

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]
Attempt = Annotated[int, msgspec.Meta(ge=1)]
MB = Annotated[int, msgspec.Meta(ge=0)]


class Msg(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every protocol message: unknown fields are refused."""


class HostInfo(Msg, frozen=True, kw_only=True):
    hostname: str = ""
    cpu_count: Annotated[int, msgspec.Meta(ge=0)] = 0
    load_1m: float = 0.0
    ram_total_mb: MB = 0
    ram_available_mb: MB = 0


class GpuInfo(Msg, frozen=True, kw_only=True):
    index: Annotated[int, msgspec.Meta(ge=0)]
    name: str
    uuid: str = ""
    vram_total_mb: MB
    vram_used_mb: MB = 0
    vram_free_mb: MB  # free for comfyfleet: measured free + what our own ComfyUI holds (cache)
    utilization_pct: float | None = None
    source: str = "nvml"


class RestartEvent(Msg, frozen=True, kw_only=True):
    """The agent (re)started one of its managed ComfyUIs, and why (DESIGN.md §5)."""

    at: float  # wall-clock time of the restart
    # exited | hung_http | hung_prompt | ws_silent | leak_vram | leak_ram | every_n_jobs |
    # start_failed | start_timeout | warmup_failed
    reason: Annotated[str, msgspec.Meta(max_length=64)]
    detail: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    job_id: str | None = None  # the job that was running when it broke, if any


class InstanceInfo(Msg, frozen=True, kw_only=True):
    """One ComfyUI instance = one slot, bound to a GPU index (None: CPU-only)."""

    instance_id: Id
    url: str = ""
    gpu_index: Annotated[int, msgspec.Meta(ge=0)] | None = None
    healthy: bool = True
    capacity: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1
    error: str | None = None
    # Managed instances (kind process or docker) also say how their agent keeps them running:
    kind: str = "external"  # external | process | docker
    state: str | None = None  # starting | warming | ready | restart_pending | backoff | unhealthy
    up_since: float | None = None  # wall-clock time it last became ready
    last_restart_reason: str | None = None
    restart_counts: dict[str, Annotated[int, msgspec.Meta(ge=0)]] = {}  # reason -> restarts
    # the most recent restarts (a few), oldest first; the coordinator publishes the new ones
    restarts: Annotated[list[RestartEvent], msgspec.Meta(max_length=16)] = []


class JobRef(Msg, frozen=True, kw_only=True):
    job_id: Id
    attempt: Attempt


class RunningJob(Msg, frozen=True, kw_only=True):
    job_id: Id
    attempt: Attempt
    instance_id: Id
    prompt_id: str | None = None  # set once ComfyUI accepted the prompt (it may wait queued)
    progress: float | None = None
    # ComfyUI has begun executing the prompt; False while it waits in ComfyUI's queue (or the
    # agent, re-attaching after its restart, has not seen it execute yet)
    started: bool = False


class ComfyCatalog(Msg, frozen=True, kw_only=True):
    """What the agent's ComfyUI offers, in ComfyUI's own words (for the coordinator's ComfyUI
    facade): the `/object_info` document and the model files by folder (`/models/{folder}`)."""

    object_info: dict[str, Any] = {}
    models: dict[str, list[str]] = {}


class Register(Msg, frozen=True, kw_only=True):
    agent_id: Id
    version: str = ""
    host: HostInfo = HostInfo()
    gpus: list[GpuInfo] = []
    instances: list[InstanceInfo] = []
    labels: dict[str, str] = {}
    models: list[str] = []
    # node classes its ComfyUI offers (/object_info); None: not known, nothing is checked
    node_classes: list[str] | None = None
    running: list[RunningJob] = []
    # random, fixed when the agent process starts: tells a restart of the agent (or another host
    # using its token) from the same process registering again; "" from older agents
    instance_id: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] = ""
    comfyui: ComfyCatalog | None = None  # None: not read (yet)


class RegisterReply(Msg, frozen=True, kw_only=True):
    heartbeat_interval_s: float
    lease_ttl_s: float
    lease_wait_s: float
    chunk_size: int
    drop: list[JobRef] = []  # reported jobs the agent must stop at once (stale or unknown)
    # outputs go straight to object storage (UploadPlan), not in chunks to the coordinator
    direct_uploads: bool = False
    # an output of at most this many bytes may travel inside the finish report (OutputFile.data)
    # instead of being uploaded; 0 (and older coordinators, which do not send it): none may
    inline_output_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0


class Heartbeat(Msg, frozen=True, kw_only=True):
    agent_id: Id
    host: HostInfo = HostInfo()
    gpus: list[GpuInfo] = []
    instances: list[InstanceInfo] = []
    running: list[RunningJob] = []
    draining: bool = False
    # refreshed inventory (sent now and then, when it changed); None: unchanged
    models: list[str] | None = None
    node_classes: list[str] | None = None
    comfyui: ComfyCatalog | None = None  # sent when it changed; None: unchanged


class HeartbeatReply(Msg, frozen=True, kw_only=True):
    heartbeat_interval_s: float
    cancel: list[JobRef] = []  # stop these (user cancel, timeout): interrupt, then finish
    drop: list[JobRef] = []  # stale: stop at once, report nothing more
    drain: bool = False
    reregister: bool = False  # the coordinator does not know this agent: register again


class LeaseRequest(Msg, frozen=True, kw_only=True):
    agent_id: Id
    free: dict[Id, Annotated[int, msgspec.Meta(ge=0, le=64)]] = {}  # instance_id -> free places
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 25.0
    # attempts whose prompt ComfyUI has finished (outputs and report on their way): they no
    # longer hold a place in ComfyUI's queue, so the next job may take it now
    finishing: Annotated[list[JobRef], msgspec.Meta(max_length=1024)] = []


class Assignment(Msg, frozen=True, kw_only=True):
    job_id: Id
    attempt: Attempt
    instance_id: Id
    workflow: dict[str, Any]
    timeout_s: float
    vram_mb: int = 0
    inputs: dict[str, bytes] = {}  # input files: upload to ComfyUI's input folder first
    # a prompt of the ComfyUI facade: forward ComfyUI's own frames (JobEvent kind "comfy") and
    # keep temp files (PreviewImage) as outputs too
    forward_frames: bool = False
    extra_data: dict[str, Any] = {}  # ComfyUI's extra_data for the prompt (e.g. extra_pnginfo)


class LeaseReply(Msg, frozen=True, kw_only=True):
    jobs: list[Assignment] = []
    cancel: list[JobRef] = []  # also sent here so a cancel reaches a long-polling agent at once
    drain: bool = False


class Started(Msg, frozen=True, kw_only=True):
    agent_id: Id
    job_id: Id
    attempt: Attempt
    prompt_id: str
    seeds: dict[str, int] = {}


class JobEvent(Msg, frozen=True, kw_only=True):
    kind: Literal[
        "started", "cached", "executing", "progress", "executed", "preview", "text", "log", "comfy"
    ]
    t: float
    node: str | None = None
    node_type: str | None = None
    value: float | None = None
    max: float | None = None
    fraction: float | None = None
    nodes: list[str] = []
    text: str | None = None
    image: bytes | None = None  # preview frames (msgpack bin)
    mime: str | None = None
    data: dict[str, Any] | None = None  # kind "comfy": a ComfyUI text frame exactly as it came


class Events(Msg, frozen=True, kw_only=True):
    agent_id: Id
    job_id: Id
    attempt: Attempt
    events: Annotated[list[JobEvent], msgspec.Meta(max_length=1000)]


class ComfyRef(Msg, frozen=True, kw_only=True):
    """How ComfyUI named an output file (`executed` and `/history`), before the agent renamed it."""

    filename: Annotated[str, msgspec.Meta(max_length=1024)]
    subfolder: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    type: Annotated[str, msgspec.Meta(max_length=32)] = "output"
    key: Annotated[str, msgspec.Meta(max_length=64)] = "images"  # the ui key that listed it


class OutputFile(Msg, frozen=True, kw_only=True):
    # `name` is the stored name, `original` the name ComfyUI wrote (shared/names.py: one rule)
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=names.MAX_STORED)]
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    content_type: str = "application/octet-stream"
    node_id: str | None = None
    kind: str = "output"  # ComfyUI's folder type: output or temp
    original: Annotated[str, msgspec.Meta(max_length=4096)] = ""  # "" from older agents
    comfy_ref: ComfyRef | None = None
    # the file's bytes, inside the finish report instead of uploaded (msgpack bin): only when the
    # coordinator announced it accepts files of this size (RegisterReply.inline_output_bytes);
    # unset, the field is not sent at all (older coordinators refuse unknown fields)
    data: bytes | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if isinstance(self.data, bytes) and len(self.data) != self.size:
            raise ValueError(f"`data` holds {len(self.data)} bytes, not the {self.size} of size")
        if not self.original:
            return
        if names.stored_name(self.original) != self.name:
            raise ValueError(f"name {self.name!r} is not the stored form of original")
        ref = self.comfy_ref
        if ref is not None and names.original_name(ref.subfolder, ref.filename, ref.type) != (
            self.original
        ):
            raise ValueError("original is not the name comfy_ref gives")


# ErrorInfo codes of jobs caught in a restart of a managed ComfyUI: requeued without spending a
# retry (RESTARTED), or failed because the job broke an instance a second time (BROKEN).
INSTANCE_RESTARTED = "comfyui_restarted"
INSTANCE_BROKEN = "comfyui_broken"


class ErrorInfo(Msg, frozen=True, kw_only=True):
    code: str
    message: str
    node_id: str | None = None
    node_type: str | None = None
    retryable: bool = False
    details: dict[str, Any] = {}


Outcome = Literal["completed", "failed", "cancelled", "requeue"]


class NodeTiming(Msg, frozen=True, kw_only=True):
    """One node of a finished prompt: how long it ran, or that ComfyUI served it from cache."""

    node: str
    node_type: str | None = None
    ms: float = 0.0
    cached: bool = False


class Finish(Msg, frozen=True, kw_only=True):
    agent_id: Id
    job_id: Id
    attempt: Attempt
    outcome: Outcome
    outputs: list[OutputFile] = []
    error: ErrorInfo | None = None
    spend_retry: bool = True  # False for drains: the attempt did not fail
    timings: dict[str, float] = {}
    vram_peak_mb: MB | None = None  # highest VRAM its ComfyUI held while the job ran
    profile: Annotated[list[NodeTiming], msgspec.Meta(max_length=10_000)] = []


class Ack(Msg, frozen=True, kw_only=True):
    ok: bool = True
    status: str | None = None


class Report(Msg, frozen=True, kw_only=True):
    """One report in a batch (`Reports`): exactly one of `started`, `events` or `finish`."""

    started: Started | None = None
    events: Events | None = None
    finish: Finish | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.started, self.events, self.finish)) != 1:
            raise ValueError("a report holds exactly one of started, events or finish")


class Reports(Msg, frozen=True, kw_only=True):
    """Several reports of one agent in one request (POST agent/v1/reports), applied in order and
    written in one store transaction: a store fault fails the whole batch (503), nothing of it
    applied. Each report names this agent."""

    agent_id: Id
    reports: Annotated[list[Report], msgspec.Meta(min_length=1, max_length=256)]


class ReportError(Msg, frozen=True, kw_only=True):
    """Why the coordinator refused one report of a batch: the HTTP status and error body the
    same report alone would have got (e.g. 409 stale_attempt, 422 outputs)."""

    status: Annotated[int, msgspec.Meta(ge=400, le=499)]
    code: str
    message: str
    field: str | None = None


class ReportAck(Msg, frozen=True, kw_only=True):
    """The answer to one report of a batch: its Ack, or its refusal."""

    ack: Ack | None = None
    error: ReportError | None = None


class ReportsReply(Msg, frozen=True, kw_only=True):
    acks: list[ReportAck]  # one per report, in order


class UploadState(Msg, frozen=True, kw_only=True):
    """Answer to an output chunk: how many bytes of the file the coordinator holds."""

    name: str
    received: int
    size: int
    complete: bool


class UploadPart(Msg, frozen=True, kw_only=True):
    """One piece of an output to PUT to object storage: bytes [offset, offset + size) of the
    file to `url` (presigned, short-lived; no other credential). `number` 0: the whole file in
    one PUT; 1 and up: a part of a multipart upload."""

    number: Annotated[int, msgspec.Meta(ge=0, le=10_000)]
    offset: Annotated[int, msgspec.Meta(ge=0)]
    size: Annotated[int, msgspec.Meta(ge=0)]
    url: str


class UploadPlan(Msg, frozen=True, kw_only=True):
    """What is left to upload of one output to object storage: the parts not there yet (after a
    restart of the agent, only those), then `.../complete`; `complete`: nothing left to do."""

    name: str
    complete: bool = False
    parts: list[UploadPart] = []

"""Schemas of what the client API answers (jobs, agents, health, SSE event data), for
`/openapi.json`.

Request bodies come from the msgspec structs themselves (see openapi.py); these answers are
built as dicts by views.py and feed.py, so they are described here, field by field, and
tests/api/test_openapi.py compares every field with what the coordinator really sends, both ways.
docs/api.md must name every field (tests/api/test_api_doc.py).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]
Field = str | Schema  # a string is the description of a plain value


def _object(fields: dict[str, Field], required: bool) -> Schema:
    props = {k: ({"description": v} if isinstance(v, str) else v) for k, v in fields.items()}
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(fields)
    return out


def obj(fields: dict[str, Field]) -> Schema:
    """An object that always has these fields."""
    return _object(fields, required=True)


def optional(fields: dict[str, Field]) -> Schema:
    """An object whose fields may each be missing."""
    return _object(fields, required=False)


def event(names: str, described: dict[str, Field] | None = None) -> Schema:
    """An SSE event's data: the fields `names` lists, in order, always sent. Most repeat a field
    of the job, its progress or the agent, described there; here only the others are."""
    described = described or {}
    order = names.split()
    unknown = set(described) - set(order)
    if unknown:
        raise ValueError(f"described but not named: {sorted(unknown)}")
    return obj({name: described.get(name, "") for name in order})


def arr(items: Field) -> Schema:
    return {"type": "array", "items": {"description": items} if isinstance(items, str) else items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


OUTPUT = optional(
    {
        "name": "stored name; unique within the job",
        "original": "the file name ComfyUI wrote (subfolder/filename, any characters)",
        "size": "bytes",
        "sha256": "hex digest, verified before the job completed",
        "content_type": "the type it is served with (derived from the name, not declared)",
        "node_id": "the node that wrote it",
        "kind": "ComfyUI's folder type: output or temp",
        "comfy_ref": nullable(
            optional(
                {
                    "filename": "as ComfyUI named it",
                    "subfolder": "",
                    "type": "output or temp",
                    "key": "the ui key that listed it (images, gifs, …)",
                }
            )
        ),
        "url": "where to download it",
    }
)
ERROR_INFO = optional(
    {
        "code": "e.g. retries_exhausted, timeout, node_error, out_of_memory",
        "message": "what went wrong",
        "node_id": "the node ComfyUI named, if any",
        "node_type": "its class",
        "retryable": "whether the failure was outside the workflow",
        "details": "ComfyUI's own error details",
    }
)
PROGRESS = optional(
    {
        "fraction": "0..1, null until the agent reports",
        "node": "the node running now",
        "node_type": "its class",
        "value": "step within the node",
        "max": "steps of the node",
        "cached_nodes": "nodes ComfyUI served from cache",
        "updated_at": "when the agent last reported",
    }
)
TRANSITION = obj(
    {
        "at": "unix time",
        "from_status": "null for the first entry",
        "to_status": "status entered",
        "event": "submit, enqueue, assign, start, complete, fail, requeue, cancel",
        "reason": "why, in words",
        "attempt": "the attempt it belongs to",
        "agent_id": "the agent, where one is involved",
        "epoch": "the leader's term that made the move (several coordinators on PostgreSQL); "
        "null with one coordinator, and for a job stored by a follower",
    }
)
ETA = nullable(
    optional(
        {
            "expected_s": "learned duration of this workflow shape (on this GPU model); null if "
            "only progress is known",
            "elapsed_s": "running for (running jobs)",
            "remaining_s": "time left",
            "eta_at": "unix time it should end (running jobs)",
        }
    )
)
NODE_TIMING = obj(
    {"node": "node id", "node_type": "its class", "ms": "run time", "cached": "served from cache"}
)

DELIVERY_TRY = obj(
    {
        "at": "unix time the try started",
        "status": "the receiver's HTTP status (null: no answer)",
        "error": "why the try failed (null when it was delivered)",
        "ms": "how long the try took",
    }
)
WEBHOOK = obj(
    {
        "id": "the webhook-id header: the same on every try",
        "event": "job.running, job.completed, job.failed or job.cancelled",
        "url": "where it is sent",
        "state": "pending, delivered or failed (given up)",
        "attempts": "tries so far",
        "created_at": "unix time of the change it tells of",
        "next_at": "unix time of the next try (null unless pending)",
        "tries": arr(DELIVERY_TRY),
    }
)
TENANT = obj(
    {
        "webhooks": arr(obj({"url": "where events are sent", "events": "which events"})),
        "webhook_secret": "set, or null when the coordinator's webhook_secret signs",
        "retention_s": "the tenant's own retention (null: the coordinator's)",
        "effective_retention_s": "the retention that applies",
    }
)

# GET /v1/jobs/{id} (and the answers of submit and cancel)
JOB_SUMMARY_FIELDS: dict[str, Field] = {
    "id": "job id",
    "status": "SUBMITTED, QUEUED, ASSIGNED, RUNNING, COMPLETED, FAILED or CANCELLED",
    "attempt": "placements so far (the fencing token)",
    "agent_id": "where it runs or ran",
    "instance_id": "the ComfyUI instance on that agent",
    "gpu_index": "the GPU (null for a CPU slot)",
    "prompt_id": "ComfyUI's prompt id",
    "created_at": "unix time of the submission",
    "updated_at": "unix time of the last change",
    "timestamps": "status -> unix time it was last entered",
    "priority": "-1000..1000",
    "resources": obj(
        {
            "gpus": "0 or 1",
            "vram_mb": "the reservation placement uses (declared, learned or default)",
            "ram_mb": "host RAM to reserve",
            "cpu": "host CPUs to reserve",
        }
    ),
    "progress": PROGRESS,
    "pending_reason": "why a QUEUED job waits (null otherwise)",
    "cancel_requested": "a cancel was asked and not yet confirmed",
    "retries_used": "retries spent",
    "max_retries": "retries allowed",
    "error": nullable(ERROR_INFO),
    "outputs": arr(OUTPUT),
    "workflow_hash": "SHA-256 of the canonical workflow",
    "shape_hash": "hash of the workflow's shape (nodes, links, models): placement affinity",
    "metadata": "what the client sent",
    "eta": ETA,
}
JOB_DETAIL_FIELDS: dict[str, Field] = {
    "seeds": "node id -> seed used (the -1 seeds replaced)",
    "constraints": obj({"labels": "", "gpu_name": "", "models": ""}),
    "timeout_s": "per attempt",
    "timings": "phase -> seconds, as the agent measured",
    "history": arr(TRANSITION),
    "gpu_name": "the GPU model the completed attempt ran on",
    "vram_peak_mb": "the VRAM peak the agent measured during the completed attempt",
    "profile": arr(NODE_TIMING),
    "inputs": arr("names of the input files sent with the job"),
    "webhooks": arr(WEBHOOK),
}
JOB = obj({**JOB_SUMMARY_FIELDS, **JOB_DETAIL_FIELDS})
JOB_SUMMARY = obj(JOB_SUMMARY_FIELDS)
JOB_LIST = obj(
    {"jobs": arr(JOB_SUMMARY), "next_cursor": "the cursor of the next page, or null at the end"}
)

AGENT_GPU = optional(
    {
        "index": "GPU index on its host",
        "name": "model, e.g. NVIDIA GeForce RTX 4090",
        "uuid": "NVML UUID",
        "vram_total_mb": "",
        "vram_used_mb": "by anything, as measured",
        "vram_free_mb": "free for comfyfleet (what our own ComfyUI caches counts as free)",
        "utilization_pct": "",
        "source": "nvml or comfyui (where the numbers come from)",
        "vram_reserved_mb": "reservations of the jobs placed on it",
        "vram_schedulable_mb": "what a new job could reserve now",
    }
)
RESTART = obj(
    {
        "at": "unix time of the restart",
        "reason": "exited, hung_http, hung_prompt, ws_silent, leak_vram, leak_ram, "
        "every_n_jobs, start_failed, start_timeout, warmup_failed",
        "detail": "what was seen (exit code, the log's last line, …)",
        "job_id": "the job running when it crashed or hung, if any",
    }
)
AGENT = obj(
    {
        "id": "agent id",
        "status": "ONLINE, DRAINING, RECONNECTING or LOST",
        "version": "agent software version",
        "labels": "key -> value, matched by constraints.labels",
        "last_seen": "unix time of its last message",
        "seen_ago_s": "seconds since",
        "registered_at": "unix time of its last registration",
        "host": obj(
            {
                "hostname": "",
                "cpu_count": "",
                "load_1m": "",
                "ram_total_mb": "",
                "ram_available_mb": "",
            }
        ),
        "gpus": arr(AGENT_GPU),
        "instances": arr(
            optional(
                {
                    "instance_id": "",
                    "url": "",
                    "gpu_index": "null: a CPU-only instance (a CPU slot)",
                    "healthy": "",
                    "capacity": "prompts it holds at once",
                    "error": "why it is unhealthy",
                    "kind": "external, or process / docker: the agent runs and heals it",
                    "state": "managed: starting, warming, ready, restart_pending, backoff, "
                    "unhealthy",
                    "up_since": "managed: unix time it last became ready",
                    "last_restart_reason": "managed: why the agent last restarted it",
                    "restart_counts": "managed: reason -> restarts since the agent started",
                    "restarts": arr(RESTART),
                }
            )
        ),
        "models": "model files its ComfyUI has",
        "node_classes": "how many node classes its ComfyUI offers (null: not reported)",
        "recent": "instance -> workflow shapes and models it ran recently (warm cache)",
        "blocked_workflows": "shape hash -> until when it is blocked here after failures",
        "jobs": "ids of the active jobs placed on it that the caller may see",
        "ram_reserved_mb": "host RAM reserved by its jobs",
    }
)
AGENT_LIST = obj({"agents": arr(AGENT)})
HEALTH = obj(
    {
        "ok": "true",
        "role": "leader (places jobs, serves agents) or follower (several coordinators on one "
        "PostgreSQL store; one coordinator is always the leader)",
        "leader": "the leader's URL; null while none is elected",
        "epoch": "the leader's term (its fencing token), on the leader; else null",
        "jobs_active": "jobs not yet ended (in this coordinator's memory: 0 on a follower)",
        "queued": "jobs waiting for a GPU (likewise)",
        "agents": "agents known (a follower: as registered in the store)",
        "counters": "placements, requeues, lost_agents, placements_warm, workflow_blocked, …",
    }
)

# Server-sent events: `event: <kind>`, `id: <n>`, `data: <one of these>`
EVENTS: dict[str, Schema] = {
    "SseJob": event(
        "job_id status attempt agent_id at reason pending_reason cancel_requested error outputs "
        "timestamps",
        {
            "at": "when",
            "reason": "the transition's reason",
            "error": nullable(ERROR_INFO),
            "outputs": arr(OUTPUT),
        },
    ),
    "SseProgress": event(
        "job_id attempt fraction node node_type value max cached_nodes at running_since",
        {"running_since": "when the job entered RUNNING"},
    ),
    "SsePreview": event(
        "job_id attempt mime url", {"mime": "image type", "url": "GET it for the frame"}
    ),
    "SseOutput": optional({"job_id": "", "attempt": "", **OUTPUT["properties"]}),
    "SseAgent": event(
        "agent_id event status draining jobs gpus",
        {
            "event": "registered, heartbeat, lost, drain …",
            "jobs": "ids of its active jobs the caller may see",
            "gpus": arr(event("index name vram_total_mb vram_used_mb vram_free_mb")),
        },
    ),
    "SseComfyuiRestarted": obj({"agent_id": "", "instance_id": "", **RESTART["properties"]}),
}
# SSE `event:` name -> schema of its data
EVENT_KINDS = {
    "job": "SseJob",
    "progress": "SseProgress",
    "preview": "SsePreview",
    "output": "SseOutput",
    "agent": "SseAgent",
    "comfyui_restarted": "SseComfyuiRestarted",
}

SCHEMAS: dict[str, Schema] = {
    "Job": JOB,
    "JobList": JOB_LIST,
    "Agent": AGENT,
    "AgentList": AGENT_LIST,
    "Health": HEALTH,
    "Tenant": TENANT,
    **EVENTS,
}

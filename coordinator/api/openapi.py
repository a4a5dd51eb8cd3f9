"""The coordinator's OpenAPI 3.1 description, served at `/openapi.json`.

One table, `OPERATIONS`, lists every route as (method, path) -> operation; adding a route is one
entry here (tests/api/test_openapi.py fails naming any route the table lacks). Request bodies and
agent protocol answers come from the msgspec structs themselves, so the spec cannot drift from what
is decoded; the client API's answers are described in schemas.py and checked against what is sent.
docs/api.md must name every route and field of this document (tests/api/test_api_doc.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from comfyfleet.coordinator.api.schemas import EVENT_KINDS, SCHEMAS
from comfyfleet.coordinator.tenants import TenantSettings
from comfyfleet.shared import protocol as p
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus

routes = web.RouteTableDef()
REF = "#/components/schemas/{name}"
BODY_TYPES: tuple[type[Any], ...] = (
    JobSpec,
    TenantSettings,
    p.Register,
    p.Heartbeat,
    p.LeaseRequest,
    p.Started,
    p.Events,
    p.Finish,
    p.Reports,
    p.RegisterReply,
    p.HeartbeatReply,
    p.LeaseReply,
    p.Ack,
    p.ReportsReply,
    p.UploadState,
    p.UploadPlan,
)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
        }
    },
}
ID_PARAM: dict[str, Any] = {
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
    "required": True,
}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", **ID_PARAM}


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _json_body(type_name: str, msgpack: bool = False) -> dict[str, Any]:
    schema = {"$ref": REF.format(name=type_name)}
    content = {"application/json": {"schema": schema}}
    if msgpack:
        content["application/msgpack"] = {"schema": schema}
    return {"required": True, "content": content}


def _op(
    summary: str,
    ok: str = "200",
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    tag: str = "client",
    errors: tuple[str, ...] = ("400",),
    answer: str | None = None,
    media: str = "application/json",
) -> dict[str, Any]:
    """One operation; `answer` names the schema of its success body."""
    success: dict[str, Any] = {"description": "success"}
    if answer is not None:
        success["content"] = {media: {"schema": {"$ref": REF.format(name=answer)}}}
    responses: dict[str, Any] = {ok: success}
    for code in errors:
        responses[code] = {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


_STATUSES = ",".join(s.value for s in JobStatus)
_AGENT_OUTPUT_PARAMS = [
    _path("job_id"),
    _path("name"),
    _query("agent_id", ID_PARAM["schema"], True),
    _query("attempt", {"type": "integer", "minimum": 0}, True),
    _query("size", {"type": "integer", "minimum": 0}, True),
]

# SSE `event:` name -> the schema of its `data:`
SSE_EVENTS = {kind: {"$ref": REF.format(name=name)} for kind, name in EVENT_KINDS.items()}

# (method, path) -> operation. One entry per route the coordinator serves.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/healthz"): _op("Liveness and queue figures", errors=(), answer="Health"),
    ("get", "/openapi.json"): _op("This description", errors=()),
    ("post", "/v1/jobs"): _op(
        "Submit a job (API-format ComfyUI workflow)",
        "201",
        params=[
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 256},
            }
        ],
        body=_json_body("JobSpec"),
        errors=("400", "413", "415", "422", "429", "503"),
        answer="Job",
    ),
    ("get", "/v1/jobs"): _op(
        "List jobs, newest first",
        params=[
            _query("status", {"type": "string", "description": f"comma-separated: {_STATUSES}"}),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
            _query("cursor", {"type": "string"}),
        ],
        answer="JobList",
    ),
    ("get", "/v1/jobs/{job_id}"): _op(
        "One job with its history", params=[_path("job_id")], errors=("400", "404"), answer="Job"
    ),
    ("post", "/v1/jobs/{job_id}/cancel"): _op(
        "Cancel a job", params=[_path("job_id")], errors=("400", "404", "409"), answer="Job"
    ),
    ("get", "/v1/jobs/{job_id}/outputs/{name}"): _op(
        "Download one output file", params=[_path("job_id"), _path("name")], errors=("400", "404")
    ),
    ("get", "/v1/jobs/{job_id}/preview"): _op(
        "The latest preview frame", params=[_path("job_id")], errors=("400", "404")
    ),
    ("get", "/v1/jobs/{job_id}/events"): {
        **_op(
            "Server-sent events of one job (ends at its terminal state)",
            params=[
                _path("job_id"),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                },
            ],
            errors=("400", "404"),
            media="text/event-stream",
        ),
        "x-stream": True,
        "x-events": SSE_EVENTS,
    },
    ("get", "/v1/events"): {
        **_op(
            "Server-sent events of the fleet",
            params=[
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                }
            ],
            media="text/event-stream",
        ),
        "x-stream": True,
        "x-events": SSE_EVENTS,
    },
    ("get", "/"): _op("The dashboard (HTML)", errors=()),
    ("get", "/static/{filename}"): _op(
        "Dashboard assets", params=[_path("filename")], errors=("404",)
    ),
    ("get", "/metrics"): _op("Prometheus metrics (text exposition format)", errors=()),
    ("get", "/v1/agents"): _op("List agents", errors=(), answer="AgentList"),
    ("get", "/v1/agents/{agent_id}"): _op(
        "One agent", params=[_path("agent_id")], errors=("400", "404"), answer="Agent"
    ),
    ("get", "/v1/tenants/{tenant}"): _op(
        "A tenant's settings: webhook subscriptions, retention",
        params=[_path("tenant")],
        errors=("400", "404"),
        answer="Tenant",
    ),
    ("put", "/v1/tenants/{tenant}"): _op(
        "Replace a tenant's settings (retention: admin only)",
        params=[_path("tenant")],
        body=_json_body("TenantSettings"),
        errors=("400", "403", "404", "413", "415"),
        answer="Tenant",
    ),
    ("post", "/v1/agents/{agent_id}/drain"): _op(
        "Drain an agent", "202", params=[_path("agent_id")], errors=("400", "404"), answer="Agent"
    ),
    **{
        ("post", f"/agent/v1/{name}"): _op(
            f"Agent protocol: {name} (msgpack; JSON for debugging)",
            body=_json_body(type_.__name__, msgpack=True),
            tag="agent",
            errors=("400", "404", "409", "413", "415", "422", "503"),
            answer=answer.__name__,
        )
        for name, type_, answer in (
            ("register", p.Register, p.RegisterReply),
            ("heartbeat", p.Heartbeat, p.HeartbeatReply),
            ("lease", p.LeaseRequest, p.LeaseReply),
            ("started", p.Started, p.Ack),
            ("events", p.Events, p.Ack),
            ("finish", p.Finish, p.Ack),
            ("reports", p.Reports, p.ReportsReply),
        )
    },
    ("put", "/agent/v1/jobs/{job_id}/outputs/{name}"): _op(
        "Agent protocol: one chunk of an output file",
        tag="agent",
        params=[
            *_AGENT_OUTPUT_PARAMS,
            _query("offset", {"type": "integer", "minimum": 0}, True),
            _query("sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"}, True),
        ],
        body={
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        errors=("400", "404", "409", "413", "503"),
        answer="UploadState",
    ),
    ("get", "/agent/v1/jobs/{job_id}/outputs/{name}"): _op(
        "Agent protocol: bytes held of an output (to resume)",
        tag="agent",
        params=_AGENT_OUTPUT_PARAMS,
        errors=("400", "404", "409"),
        answer="UploadState",
    ),
    ("post", "/agent/v1/jobs/{job_id}/outputs/{name}/plan"): _op(
        "Agent protocol, outputs in object storage: the parts still to PUT, presigned",
        tag="agent",
        params=_AGENT_OUTPUT_PARAMS,
        errors=("400", "404", "409", "502", "503"),
        answer="UploadPlan",
    ),
    ("post", "/agent/v1/jobs/{job_id}/outputs/{name}/complete"): _op(
        "Agent protocol, outputs in object storage: finish and verify one output",
        tag="agent",
        params=[
            *_AGENT_OUTPUT_PARAMS,
            _query("sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"}, True),
        ],
        errors=("400", "404", "409", "502", "503"),
        answer="UploadState",
    ),
}


def build_spec() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(BODY_TYPES, ref_template=REF)
    components["Error"] = ERROR_SCHEMA
    components.update(SCHEMAS)
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in OPERATIONS.items():
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "comfyfleet coordinator",
            "version": "1",
            "description": "Client API (JSON) and agent protocol (msgpack or JSON). "
            'Every error is {"error": {code, message, field}}.',
        },
        "paths": paths,
        "components": {"schemas": components},
    }


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_spec())

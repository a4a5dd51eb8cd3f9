"""The coordinator's OpenAPI 3.1 description, served at `/openapi.json`.

One table, `OPERATIONS`, lists every route as (method, path) -> operation; adding a route is one
entry here (tests/api/test_openapi.py fails naming any route the table lacks). Request body
schemas come from the msgspec structs themselves, so the spec cannot drift from what is decoded.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

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
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": "success"}}
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

# (method, path) -> operation. One entry per route the coordinator serves.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/healthz"): _op("Liveness and queue figures", errors=()),
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
    ),
    ("get", "/v1/jobs"): _op(
        "List jobs, newest first",
        params=[
            _query("status", {"type": "string", "description": f"comma-separated: {_STATUSES}"}),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
            _query("cursor", {"type": "string"}),
        ],
    ),
    ("get", "/v1/jobs/{job_id}"): _op(
        "One job with its history", params=[_path("job_id")], errors=("400", "404")
    ),
    ("post", "/v1/jobs/{job_id}/cancel"): _op(
        "Cancel a job", params=[_path("job_id")], errors=("400", "404", "409")
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
        ),
        "x-stream": True,
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
        ),
        "x-stream": True,
    },
    ("get", "/"): _op("The dashboard (HTML)", errors=()),
    ("get", "/static/{filename}"): _op(
        "Dashboard assets", params=[_path("filename")], errors=("404",)
    ),
    ("get", "/metrics"): _op("Prometheus metrics (text exposition format)", errors=()),
    ("get", "/v1/agents"): _op("List agents", errors=()),
    ("get", "/v1/agents/{agent_id}"): _op(
        "One agent", params=[_path("agent_id")], errors=("400", "404")
    ),
    ("get", "/v1/tenants/{tenant}"): _op(
        "A tenant's settings: webhook subscriptions, retention",
        params=[_path("tenant")],
        errors=("400", "404"),
    ),
    ("put", "/v1/tenants/{tenant}"): _op(
        "Replace a tenant's settings (retention: admin only)",
        params=[_path("tenant")],
        body=_json_body("TenantSettings"),
        errors=("400", "403", "404", "413", "415"),
    ),
    ("post", "/v1/agents/{agent_id}/drain"): _op(
        "Drain an agent", "202", params=[_path("agent_id")], errors=("400", "404")
    ),
    **{
        ("post", f"/agent/v1/{name}"): _op(
            f"Agent protocol: {name} (msgpack; JSON for debugging)",
            body=_json_body(type_.__name__, msgpack=True),
            tag="agent",
            errors=("400", "404", "409", "413", "415", "422", "503"),
        )
        for name, type_ in (
            ("register", p.Register),
            ("heartbeat", p.Heartbeat),
            ("lease", p.LeaseRequest),
            ("started", p.Started),
            ("events", p.Events),
            ("finish", p.Finish),
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
    ),
    ("get", "/agent/v1/jobs/{job_id}/outputs/{name}"): _op(
        "Agent protocol: bytes held of an output (to resume)",
        tag="agent",
        params=_AGENT_OUTPUT_PARAMS,
        errors=("400", "404", "409"),
    ),
}


def build_spec() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(BODY_TYPES, ref_template=REF)
    components["Error"] = ERROR_SCHEMA
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

"""`/openapi.json` stays in step with the routes the app really serves."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import msgspec
from aiohttp import web

from comfyfleet.coordinator.api.openapi import OPERATIONS, build_spec
from comfyfleet.coordinator.api.schemas import EVENT_KINDS
from comfyfleet.coordinator.app import create_app
from comfyfleet.shared import protocol as p
from tests.api.conftest import MakeHarness, fast_config


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None and "prefix" in info:  # a static directory
            path = f"{info['prefix']}/{{filename}}"
        out.add((route.method.lower(), path))
    return out


def test_every_route_is_described_and_nothing_else(tmp_path: Any) -> None:
    served = served_routes(create_app(fast_config(tmp_path)))
    described = set(OPERATIONS)
    missing = sorted(served - described)
    extra = sorted(described - served)
    assert not missing, (
        f"routes served but missing from coordinator/api/openapi.py OPERATIONS: {missing}"
    )
    assert not extra, f"OPERATIONS describes routes the app does not serve: {extra}"


def test_spec_is_openapi_3_with_resolvable_refs() -> None:
    spec = build_spec()
    assert spec["openapi"].startswith("3.")
    schemas = spec["components"]["schemas"]
    text = repr(spec)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in schemas, f"dangling $ref {ref}"
    assert "workflow" in schemas["JobSpec"]["required"]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            assert op["responses"], (method, path)


async def test_served_over_http(harness: MakeHarness) -> None:
    h = await harness()
    resp = await h.client.get("/openapi.json")
    assert resp.status == 200
    body = await resp.json()
    assert "/v1/jobs" in body["paths"] and "post" in body["paths"]["/v1/jobs"]


def drift(value: Any, schema: dict[str, Any], comps: dict[str, Any], where: str) -> list[str]:
    """Where a JSON value and its schema disagree on field names: fields sent but not described,
    required fields not sent; recursing through objects, arrays, anyOf and $ref."""
    if "$ref" in schema:
        return drift(value, comps[schema["$ref"].rsplit("/", 1)[1]], comps, where)
    if "anyOf" in schema:
        tries = [drift(value, s, comps, where) for s in schema["anyOf"]]
        return min(tries, key=len)
    if schema.get("type") == "null":
        return [] if value is None else [f"{where}: not null"]
    if schema.get("type") == "array":
        if not isinstance(value, list):
            return [f"{where}: not an array"]
        return [x for i, v in enumerate(value) for x in drift(v, schema["items"], comps, where)]
    if "properties" not in schema:
        return []
    if not isinstance(value, dict):
        return [f"{where}: not an object"]
    props = schema["properties"]
    out = [f"{where}.{k}: sent, not described" for k in value if k not in props]
    out += [
        f"{where}.{k}: described as required, not sent"
        for k in schema.get("required", [])
        if k not in value
    ]
    for k, v in value.items():
        if k in props:
            out += drift(v, props[k], comps, f"{where}.{k}")
    return out


async def test_answers_have_exactly_the_described_fields(harness: MakeHarness) -> None:
    """Jobs (submitted, listed, completed with outputs, profile, ETA), agents, health and every
    kind of SSE event, as really sent, against the schemas /openapi.json serves."""
    h = await harness()
    spec = await (await h.client.get("/openapi.json")).json()
    comps = spec["components"]["schemas"]

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    stream = await h.client.get("/v1/events")
    agent = h.agent("a1")
    await agent.register()
    submitted = await h.submit(inputs={"in.png": "aGk="})
    found = drift(submitted, ref("Job"), comps, "submit")
    leased = (await agent.lease(2.0)).jobs[0]
    await agent.started(leased)
    await agent.events(
        leased,
        [
            p.JobEvent(kind="progress", t=1.0, node="1", value=1, max=2, fraction=0.5),
            p.JobEvent(kind="preview", t=1.1, node="1", image=b"img", mime="image/png"),
        ],
    )
    running = await h.job(submitted["id"])
    found += drift(running, ref("Job"), comps, "running")
    # an instance the agent runs, restarted once: its fields and a comfyui_restarted event
    crash = p.RestartEvent(at=2.0, reason="exited", detail="killed by SIGKILL", job_id="j")
    agent.instances = [
        msgspec.structs.replace(
            agent.instances[0],
            kind="process",
            state="ready",
            up_since=3.0,
            last_restart_reason="exited",
            restart_counts={"exited": 1},
            restarts=[crash],
        )
    ]
    await agent.heartbeat()
    found += drift(
        await (await h.client.get("/v1/agents")).json(), ref("AgentList"), comps, "agents"
    )
    out = await agent.upload(leased, "o.png", b"png")
    timing = p.NodeTiming(node="1", node_type="EmptyImage", ms=3.0)
    await agent.finish(leased, outputs=[out], vram_peak_mb=100, profile=[timing])
    done = await h.job(submitted["id"])
    assert done["outputs"] and done["profile"] and done["history"]
    found += drift(done, ref("Job"), comps, "completed")
    listing = await (await h.client.get("/v1/jobs")).json()
    found += drift(listing, ref("JobList"), comps, "list")
    found += drift(await (await h.client.get("/healthz")).json(), ref("Health"), comps, "health")
    seen: set[str] = set()
    kind = ""
    async with asyncio.timeout(10):
        while seen != set(EVENT_KINDS):
            line = (await stream.content.readline()).decode()
            if line.startswith("event: "):
                kind = line[7:].strip()
            elif line.startswith("data: "):
                seen.add(kind)
                data = json.loads(line[6:])
                found += drift(data, ref(EVENT_KINDS[kind]), comps, f"event {kind}")
    stream.close()
    assert not found, "\n".join(sorted(set(found)))

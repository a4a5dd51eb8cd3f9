"""`/openapi.json` stays in step with the routes the app really serves."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from comfyfleet.coordinator.api.openapi import OPERATIONS, build_spec
from comfyfleet.coordinator.app import create_app
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

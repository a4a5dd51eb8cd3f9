"""The ComfyUI facade's HTTP surface in process: auth in ComfyUI clients' three ways, tenant
isolation, and bad input on every route answered in ComfyUI's shapes, never a 5xx.

The facade app shares the coordinator of the main app, as `--comfy-listen` runs it; a protocol
agent describes its ComfyUI (the simulator's /object_info) and runs prompts to the end.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
import pytest
from PIL import Image

from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.coordinator.comfy.auth import credential
from tests.helpers.comfy_facade import NORMAL, Facade, png


def upload_form(data: bytes, name: str = "x.png", **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


# --- credentials ---------------------------------------------------------------------------


def test_credential_in_each_of_the_three_ways() -> None:
    basic = base64.b64encode(b"anyone:cfc_key").decode()
    assert credential("Bearer cfc_key", None) == "cfc_key"
    assert credential(f"Basic {basic}", None) == "cfc_key"
    assert credential(f"Basic {base64.b64encode(b'cfc_key:').decode()}", None) == "cfc_key"
    assert credential(None, "cfc_key") == "cfc_key"
    assert credential("Basic !!!", None) is None and credential(None, None) is None


async def test_keys_bearer_basic_token_and_refusals(keyed: Facade) -> None:
    c = keyed.client
    refused = await c.get("/prompt")
    assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert (await refused.json())["error"]["type"] == "unauthorized"
    assert (await c.get("/prompt", headers={"Authorization": "Bearer cfc_nope"})).status == 401
    assert (await c.get("/prompt", headers=keyed.auth("gpu"))).status == 403  # agent token
    assert (await c.get("/api/prompt", headers=keyed.auth("acme"))).status == 200
    basic = base64.b64encode(f"me:{keyed.creds['acme']}".encode()).decode()
    assert (await c.get("/queue", headers={"Authorization": f"Basic {basic}"})).status == 200
    ws = await c.ws_connect(f"/ws?clientId=c1&token={keyed.creds['acme']}")
    greeting = await ws.receive_json()
    assert greeting["data"]["sid"] == "c1"
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await c.ws_connect("/ws?clientId=c1")


async def test_each_tenant_sees_only_its_own(keyed: Facade) -> None:
    c = keyed.client
    await keyed.agent()
    up = await c.post("/upload/image", data=upload_form(png((1, 2, 3))), headers=keyed.auth("acme"))
    assert up.status == 200
    view = {"filename": "x.png", "type": "input"}
    assert (await c.get("/view", params=view, headers=keyed.auth("acme"))).status == 200
    assert (await c.get("/view", params=view, headers=keyed.auth("beta"))).status == 404
    info = await (await c.get("/object_info/LoadImage", headers=keyed.auth("acme"))).json()
    assert "x.png" in info["LoadImage"]["input"]["required"]["image"][0]
    info = await (await c.get("/object_info/LoadImage", headers=keyed.auth("beta"))).json()
    assert "x.png" not in info["LoadImage"]["input"]["required"]["image"][0]

    acme_ws = await c.ws_connect(f"/ws?clientId=same&token={keyed.creds['acme']}")
    beta_ws = await c.ws_connect(f"/ws?clientId=same&token={keyed.creds['beta']}")
    await acme_ws.receive_json()
    await beta_ws.receive_json()
    body = {**NORMAL, "client_id": "same", "prompt_id": "shared-id"}
    for who in ("acme", "beta"):  # one prompt id, two tenants: two prompts
        resp = await c.post("/prompt", json=body, headers=keyed.auth(who))
        assert resp.status == 200, await resp.text()
    status = await acme_ws.receive_json()
    assert status["data"]["status"]["exec_info"]["queue_remaining"] == 1  # its own queue only
    queue = await (await c.get("/queue", headers=keyed.auth("acme"))).json()
    assert [item[1] for item in queue["queue_pending"]] == ["shared-id"]
    coord = keyed.main.server.app[COORDINATOR]
    tenants = sorted(j.tenant for j in coord.jobs.values())
    assert tenants == ["acme", "beta"]
    resp = await c.post("/queue", json={"clear": True}, headers=keyed.auth("beta"))
    assert resp.status == 200
    assert sorted(j.tenant for j in coord.jobs.values()) == ["acme"]
    await acme_ws.close()
    await beta_ws.close()


# --- uploads -------------------------------------------------------------------------------


async def test_upload_naming_overwrite_and_mask(open_facade: Facade) -> None:
    c = open_facade.client
    first = await (await c.post("/upload/image", data=upload_form(png((9, 9, 9))))).json()
    assert first == {"name": "x.png", "subfolder": "", "type": "input"}
    other = await (await c.post("/upload/image", data=upload_form(png((1, 1, 1))))).json()
    assert other["name"] == "x (1).png"
    again = await c.post("/upload/image", data=upload_form(png((5, 5, 5)), overwrite="true"))
    assert (await again.json())["name"] == "x.png"
    part = await c.get("/view?filename=x.png&type=input", headers={"Range": "bytes=1-3"})
    assert part.status == 206 and await part.read() == png((5, 5, 5))[1:4]
    mask = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 128)).save(mask, format="PNG")
    ref = json.dumps({"filename": "x.png", "subfolder": "", "type": "input"})
    masked = await c.post(
        "/upload/mask", data=upload_form(mask.getvalue(), "x-mask.png", original_ref=ref)
    )
    assert masked.status == 200
    name = (await masked.json())["name"]
    got = await c.get("/view", params={"filename": name, "type": "input"})
    with Image.open(io.BytesIO(await got.read())) as img:
        assert img.mode == "RGBA" and img.getpixel((0, 0))[3] == 128


async def test_view_serves_by_the_one_allow_list_with_nosniff(open_facade: Facade) -> None:
    """An uploaded SVG (script on this origin, were it served as image/svg+xml) comes back as a
    download of application/octet-stream; a PNG stays image/png. Both with nosniff."""
    c = open_facade.client
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    for name, data, ctype in (
        ("a.svg", svg, "application/octet-stream"),
        ("b.png", png((1, 1, 1)), "image/png"),
    ):
        up = await c.post("/upload/image", data=upload_form(data, name))
        assert up.status == 200, await up.text()
        got = await c.get("/view", params={"filename": name, "type": "input"})
        assert got.status == 200
        assert got.headers["Content-Type"] == ctype, name
        assert got.headers["X-Content-Type-Options"] == "nosniff"


# --- bad input on every route ----------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/prompt", {"data": b"not json"}),
    ("POST", "/prompt", {"data": b"[1, 2]"}),
    ("POST", "/prompt", {"json": {"prompt": "x"}}),
    ("POST", "/prompt", {"json": {"prompt": {"1": None}}}),
    ("POST", "/prompt", {"json": {"prompt": {"1": {"class_type": ["x"]}}}}),
    ("POST", "/prompt", {"json": {**NORMAL, "number": "abc"}}),
    ("POST", "/prompt", {"json": {**NORMAL, "number": 1e400}}),
    ("POST", "/prompt", {"json": {**NORMAL, "extra_data": [1]}}),
    ("POST", "/prompt", {"json": {**NORMAL, "prompt_id": "x" * 500}}),
    ("POST", "/prompt", {"json": {**NORMAL, "extra_data": {"comfyfleet": {"priority": "hi"}}}}),
    ("POST", "/prompt", {"json": {**NORMAL, "partial_execution_targets": "3"}}),
    (
        "POST",
        "/prompt",
        {"json": {"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": [[], 0]}}}}},
    ),  # fmt: skip
    ("POST", "/queue", {"data": b"{"}),
    ("POST", "/queue", {"json": {"delete": "abc"}}),
    ("POST", "/queue", {"json": [1]}),
    ("POST", "/interrupt", {"data": b"nope"}),
    ("POST", "/interrupt", {"json": {"prompt_id": {"a": 1}}}),
    ("POST", "/history", {"json": {"delete": 5}}),
    ("POST", "/history", {"data": b"\xff\xfe"}),
    ("GET", "/history?max_items=abc", {}),
    ("GET", "/history?offset=1.5", {}),
    ("GET", "/history/%2e%2e", {}),
    ("GET", "/view", {}),
    ("GET", "/view?filename=", {}),
    ("GET", "/view?filename=../../etc/passwd", {}),
    ("GET", "/view?filename=/etc/passwd", {}),
    ("GET", "/view?filename=a.png&type=nope", {}),
    ("GET", "/view?filename=a.png&subfolder=../..", {}),
    ("GET", "/view?filename=a.png&subfolder=comfy-" + "0" * 32, {}),
    ("GET", "/view?filename=a.png&type=output&preview=webp;abc", {}),
    ("POST", "/upload/image", {"data": b"junk"}),
    ("POST", "/upload/image", {"data": {"type": "input"}}),
    ("POST", "/upload/image", {"data": upload_form(b"x", "../evil.png")}),
    ("POST", "/upload/image", {"data": upload_form(b"x", "a.png", subfolder="../../x")}),
    ("POST", "/upload/image", {"data": upload_form(b"x", "a.png", type="nope")}),
    ("POST", "/upload/mask", {"data": upload_form(b"x", "m.png", original_ref="{bad")}),
    (
        "POST",
        "/upload/mask",
        {"data": upload_form(b"x", "m.png", original_ref='{"filename": "../x"}')},
    ),  # fmt: skip
    (
        "POST",
        "/upload/mask",
        {"data": upload_form(b"x", "m.png", original_ref='{"filename": "nope.png"}')},
    ),  # fmt: skip
    ("GET", "/object_info/%00", {}),
    ("GET", "/models/..", {}),
    ("POST", "/free", {"data": b"{"}),
]


@pytest.mark.parametrize(("method", "path", "kw"), BAD_REQUESTS)
async def test_bad_input_is_refused_in_comfyuis_shape(
    open_facade: Facade, method: str, path: str, kw: dict[str, Any]
) -> None:
    await open_facade.agent()
    for prefix in ("", "/api"):
        resp = await open_facade.client.request(method, prefix + path, **kw)
        body = await resp.read()
        assert resp.status < 500, body
        if resp.status >= 400 and resp.content_type == "application/json":
            error = json.loads(body)["error"]
            assert set(error) == {"type", "message", "details", "extra_info"}, error


async def test_prompt_in_an_upload_subfolder_travels_as_a_job_input(open_facade: Facade) -> None:
    c = open_facade.client
    await open_facade.agent()
    data = png((4, 5, 6))
    up = await c.post("/upload/image", data=upload_form(data, "in.png", subfolder="sub"))
    assert (await up.json())["subfolder"] == "sub"
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "sub/in.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    resp = await c.post("/prompt", json={"prompt": prompt, "client_id": "c"})
    assert resp.status == 200, await resp.text()
    coord = open_facade.main.server.app[COORDINATOR]
    (job,) = [coord.store.get_job(j) for j in coord.jobs]
    assert job is not None and job.spec.workflow["1"]["inputs"]["image"] == "sub_in.png"
    assert base64.b64decode(job.spec.inputs["sub_in.png"]) == data
    missing = {**prompt, "1": {"class_type": "LoadImage", "inputs": {"image": "sub/none.png"}}}
    resp = await c.post("/prompt", json={"prompt": missing})
    body = await resp.json()
    assert resp.status == 400
    assert body["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"

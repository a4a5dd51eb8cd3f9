"""The routes ComfyUI's web UI needs beyond the API, in process: the page and its files, the
user, settings and user data files (per tenant, durable across a restart), and bad input on
each of them answered as ComfyUI answers (bare statuses), never a 5xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comfyfleet.coordinator.api.auth import KEYRING
from comfyfleet.coordinator.api.keys import CONFIG, COORDINATOR
from comfyfleet.coordinator.comfy.app import create_comfy_app
from comfyfleet.coordinator.comfy.frontend import frontend_root
from tests.helpers.comfy_facade import Facade, make


async def test_the_page_its_files_and_extensions(open_facade: Facade) -> None:
    c = open_facade.client
    root = frontend_root()
    assert root is not None, "the ui extra (comfyui-frontend-package) is part of the dev extra"
    page = await c.get("/")
    assert page.status == 200 and page.headers["Cache-Control"].startswith("no-store")
    assert "<title>ComfyUI</title>" in await page.text()
    asset = next((root / "assets").glob("*.js"))
    served = await c.get(f"/assets/{asset.name}")
    assert served.status == 200 and await served.read() == asset.read_bytes()
    extensions = await (await c.get("/api/extensions")).json()
    assert "/extensions/core/groupNode.js" in extensions
    assert (await c.get("/extensions/core/groupNode.js")).status == 200
    assert (await c.get("/api/not-a-route")).status == 404
    await open_facade.agent()
    folders = await (await c.get("/api/experiment/models")).json()
    assert {"name": "checkpoints", "folders": []} in folders
    assert await (await c.get("/api/experiment/models/checkpoints")).json() == [
        {"name": "a", "pathIndex": 0}
    ]
    assert (await c.get("/api/experiment/models/nope")).status == 404


async def test_settings_and_user(open_facade: Facade) -> None:
    c = open_facade.client
    assert await (await c.get("/api/users")).json() == {"storage": "server", "migrated": False}
    assert await (await c.get("/api/settings")).json() == {}
    assert (await c.post("/api/settings", json={"Comfy.A": 1, "Comfy.B": "x"})).status == 200
    assert (await c.post("/settings/Comfy.A", json=2)).status == 200
    assert await (await c.get("/api/settings")).json() == {"Comfy.A": 2, "Comfy.B": "x"}
    assert await (await c.get("/api/settings/Comfy.B")).json() == "x"
    assert await (await c.get("/api/settings/Comfy.None")).json() is None
    assert await (await c.get("/api/users")).json() == {"storage": "server", "migrated": True}


async def test_userdata_files(open_facade: Facade) -> None:
    c = open_facade.client
    saved = await c.post("/api/userdata/workflows%2Fa.json?full_info=true", data=b'{"a": 1}')
    info = await saved.json()
    assert saved.status == 200 and info["path"] == "workflows/a.json" and info["size"] == 8
    assert (await c.post("/api/userdata/workflows%2Fb.json", data=b"{}")).status == 200
    again = await c.post("/api/userdata/workflows%2Fa.json?overwrite=false", data=b"{}")
    assert again.status == 409
    listed = await c.get("/api/userdata", params={"dir": "workflows", "recurse": "true"})
    assert await listed.json() == ["a.json", "b.json"]
    split = await c.get("/api/userdata", params={"dir": "workflows", "split": "true"})
    assert await split.json() == [["a.json", "a.json"], ["b.json", "b.json"]]
    full = await c.get("/api/userdata", params={"dir": "workflows", "full_info": "true"})
    assert [f["path"] for f in await full.json()] == ["a.json", "b.json"]
    got = await c.get("/api/userdata/workflows%2Fa.json")
    assert await got.read() == b'{"a": 1}'
    moved = await c.post("/api/userdata/workflows%2Fa.json/move/workflows%2Fsub%2Fc.json")
    assert await moved.json() == "workflows/sub/c.json"
    tree = await (await c.get("/api/v2/userdata", params={"path": "workflows"})).json()
    assert [(e["type"], e["path"]) for e in tree] == [
        ("directory", "workflows/sub"), ("file", "workflows/b.json"),
        ("file", "workflows/sub/c.json")]  # fmt: skip
    assert (await c.delete("/api/userdata/workflows%2Fb.json")).status == 204
    assert (await c.get("/api/userdata/workflows%2Fb.json")).status == 404
    assert await (await c.get("/api/v2/userdata")).json() != []


async def test_user_data_is_per_tenant_and_durable(aiohttp_client: Any, tmp_path: Path) -> None:
    keyed = await make(aiohttp_client, tmp_path, keys=True)
    c = keyed.client
    acme, beta = keyed.auth("acme"), keyed.auth("beta")
    assert (await c.post("/api/userdata/w.json", data=b"acme", headers=acme)).status == 200
    assert (await c.post("/api/settings", json={"k": "acme"}, headers=acme)).status == 200
    assert (await c.get("/api/userdata/w.json", headers=beta)).status == 404
    assert await (await c.get("/api/settings", headers=beta)).json() == {}
    # the facade restarted on the same data dir: a new app, nothing kept in memory
    main = keyed.main.server.app
    config, ring = main[CONFIG], main[KEYRING]
    restarted = await aiohttp_client(create_comfy_app(config, main[COORDINATOR], ring))
    assert await (await restarted.get("/api/userdata/w.json", headers=acme)).read() == b"acme"
    assert await (await restarted.get("/api/settings", headers=acme)).json() == {"k": "acme"}
    assert (await restarted.get("/api/userdata/w.json", headers=beta)).status == 404


BAD = [
    ("GET", "/api/userdata", {}),
    ("GET", "/api/userdata?dir=..%2F..", {}),
    ("GET", "/api/userdata?dir=nope", {}),
    ("GET", "/api/userdata/..%2F..%2Fetc%2Fpasswd", {}),
    ("POST", "/api/userdata/..%2Fx.json", {"data": b"x"}),
    ("POST", "/api/userdata/%2Fabs.json", {"data": b"x"}),
    ("DELETE", "/api/userdata/nope.json", {}),
    ("POST", "/api/userdata/nope.json/move/x.json", {}),
    ("POST", "/api/userdata/a.json/move/..%2F..%2Fb.json", {}),
    ("GET", "/api/v2/userdata?path=..", {}),
    ("GET", "/api/v2/userdata?path=nope", {}),
    ("POST", "/api/settings", {"data": b"{"}),
    ("POST", "/api/settings", {"json": [1]}),
    ("POST", "/api/settings/x", {"data": b"\xff"}),
    ("POST", "/api/users", {"json": {"username": "x"}}),
]


@pytest.mark.parametrize(("method", "path", "kw"), BAD)
async def test_bad_input_never_5xx(open_facade: Facade, method: str, path: str, kw: Any) -> None:
    await open_facade.client.post("/api/userdata/a.json", data=b"{}")
    resp = await open_facade.client.request(method, path, **kw)
    assert 400 <= resp.status < 500, (resp.status, await resp.text())

"""ComfyUI's stock web frontend on the facade's listener (the `ui` extra: the
`comfyui-frontend-package` from PyPI), with the routes it calls beyond the API proper: the user
(`/users`), settings (`/settings`), user data files (`/userdata`, `/v2/userdata`), and the
catalogues of custom-node additions the fleet has none of (`/i18n`, `/workflow_templates`,
`/global_subgraphs`). Answers follow ComfyUI's app/user_manager.py and app/app_settings.py:
bare statuses with a short text for refusals. Each tenant has its own user (`userdata.py`).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from comfyfleet.coordinator.comfy.auth import tenant
from comfyfleet.coordinator.comfy.errors import read_json
from comfyfleet.coordinator.comfy.keys import COMFY_CONFIG, FRONTEND, USERDATA
from comfyfleet.coordinator.comfy.userdata import file_info, write_atomic
from comfyfleet.shared.errors import InvalidInput

__all__ = ["ROUTES"]


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


async def index(request: web.Request) -> web.StreamResponse:
    root = request.app[FRONTEND].root
    if root is None:
        return _text(404, "ComfyUI's web UI is not installed: pip install 'comfyfleet[ui]'")
    headers = {"Cache-Control": "no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}
    return web.FileResponse(root / "index.html", headers=headers)


async def get_users(request: web.Request) -> web.Response:
    root = request.app[USERDATA].root(tenant(request))
    return web.json_response({"storage": "server", "migrated": root.is_dir()})


async def post_users(request: web.Request) -> web.Response:
    await read_json(request, empty={})
    message = "the fleet's users are its tenants: each API key has its own"
    return web.json_response({"error": message}, status=400)


async def get_settings(request: web.Request) -> web.Response:
    data = request.app[USERDATA]
    return web.json_response(await asyncio.to_thread(data.settings, tenant(request)))


async def get_setting(request: web.Request) -> web.Response:
    data = request.app[USERDATA]
    settings = await asyncio.to_thread(data.settings, tenant(request))
    return web.json_response(settings.get(request.match_info["id"]))


async def post_settings(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be an object of settings")
    data, who = request.app[USERDATA], tenant(request)
    settings = await asyncio.to_thread(data.settings, who)
    await asyncio.to_thread(data.save_settings, who, {**settings, **body})
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    value = await read_json(request, empty=None)
    data, who = request.app[USERDATA], tenant(request)
    settings = await asyncio.to_thread(data.settings, who)
    settings[request.match_info["id"]] = value
    await asyncio.to_thread(data.save_settings, who, settings)
    return web.Response(status=200)


def _flag(request: web.Request, name: str, default: str = "false") -> bool:
    return request.query.get(name, default).lower() == "true"


async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        return _text(400, "Directory not provided")
    data, who = request.app[USERDATA], tenant(request)
    folder = data.resolve(who, directory)
    if folder is None:
        return _text(403, "Invalid directory")
    if not folder.is_dir():
        return _text(404, "Directory not found")
    found = await asyncio.to_thread(
        data.listing, who, folder, _flag(request, "recurse"), _flag(request, "full_info"),
        _flag(request, "split"),
    )  # fmt: skip
    return web.json_response(found)


async def list_userdata_v2(request: web.Request) -> web.Response:
    data, who = request.app[USERDATA], tenant(request)
    rel = request.query.get("path", "")
    folder = data.resolve(who, rel) if rel else data.root(who)
    if folder is None:
        return _text(400, "Invalid path requested")
    if not folder.exists():
        if not rel:
            return web.json_response([])
        return _text(404, "Requested path not found")
    if not folder.is_dir():
        return _text(400, "Requested path is not a directory")
    return web.json_response(await asyncio.to_thread(data.listing_v2, who, folder))


def _path(request: web.Request, param: str = "file") -> Path:
    path = request.app[USERDATA].resolve(tenant(request), request.match_info[param])
    if path is None:
        raise web.HTTPForbidden()
    return path


async def get_userdata(request: web.Request) -> web.StreamResponse:
    path = _path(request)
    if not path.is_file():
        return web.Response(status=404)
    return web.FileResponse(path)


async def post_userdata(request: web.Request) -> web.Response:
    path = _path(request)
    overwrite = request.query.get("overwrite", "true") != "false"
    if not overwrite and path.exists():
        return _text(409, "File already exists")
    limit = request.app[COMFY_CONFIG].comfy_max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(limit, request.content_length)
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(limit, len(body))
    if path.is_dir():
        return _text(400, "Invalid filename: a folder has that name")
    await asyncio.to_thread(write_atomic, path, body)
    root = request.app[USERDATA].root(tenant(request))
    if _flag(request, "full_info"):
        return web.json_response(file_info(path, root))
    return web.json_response(path.relative_to(root).as_posix())


async def delete_userdata(request: web.Request) -> web.Response:
    path = _path(request)
    if not path.is_file():
        return web.Response(status=404)
    await asyncio.to_thread(path.unlink)
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    source, dest = _path(request), _path(request, "dest")
    if not source.is_file():
        return web.Response(status=404)
    if request.query.get("overwrite", "true") == "false" and dest.exists():
        return _text(409, "File already exists")
    if dest.is_dir():
        return _text(400, "Invalid destination: a folder has that name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(shutil.move, source, dest)
    root = request.app[USERDATA].root(tenant(request))
    if _flag(request, "full_info"):
        return web.json_response(file_info(dest, root))
    return web.json_response(dest.relative_to(root).as_posix())


async def empty_object(request: web.Request) -> web.Response:
    """Catalogues of custom-node additions (translations, templates, subgraphs): the fleet's
    agents run ComfyUI without serving theirs, so there are none."""
    return web.json_response({})


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/users", get_users),
    ("POST", "/users", post_users),
    ("GET", "/settings", get_settings),
    ("POST", "/settings", post_settings),
    ("GET", "/settings/{id}", get_setting),
    ("POST", "/settings/{id}", post_setting),
    ("GET", "/userdata", list_userdata),
    ("GET", "/v2/userdata", list_userdata_v2),
    ("GET", "/userdata/{file}", get_userdata),
    ("POST", "/userdata/{file}", post_userdata),
    ("DELETE", "/userdata/{file}", delete_userdata),
    ("POST", "/userdata/{file}/move/{dest}", move_userdata),
    ("GET", "/i18n", empty_object),
    ("GET", "/workflow_templates", empty_object),
    ("GET", "/global_subgraphs", empty_object),
]

"""What the fleet offers, as ComfyUI's describing routes answer: `/object_info`, `/models`,
`/experiment/models`, `/embeddings`, `/extensions`, `/features`, `/system_stats` (all from
`catalog.py`)."""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

from comfyfleet.coordinator.comfy.auth import tenant
from comfyfleet.coordinator.comfy.catalog import FEATURES, system_stats, with_uploads
from comfyfleet.coordinator.comfy.keys import FRONTEND, PORT, UPLOADS

__all__ = ["ROUTES"]


async def get_object_info(request: web.Request) -> web.Response:
    defs = request.app[PORT].fleet().object_info
    names = await asyncio.to_thread(request.app[UPLOADS].input_names, tenant(request))
    only = request.match_info.get("node_class")
    if only is not None:
        entry = defs.get(only)
        if entry is None:
            return web.json_response({})
        return web.json_response(with_uploads({only: entry}, names))
    return web.json_response(with_uploads(defs, names))


async def get_models(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[PORT].fleet().models))


async def get_model_folder(request: web.Request) -> web.Response:
    files = request.app[PORT].fleet().models.get(request.match_info["folder"])
    if files is None:
        return web.Response(status=404)
    return web.json_response(files)


async def get_model_folders(request: web.Request) -> web.Response:
    """`/experiment/models`: the fleet's model folders (the folders are on the agents)."""
    models = request.app[PORT].fleet().models
    hidden = ("configs", "custom_nodes")
    return web.json_response([{"name": f, "folders": []} for f in models if f not in hidden])


async def get_folder_models(request: web.Request) -> web.Response:
    """`/experiment/models/{folder}`: the folder's files on the fleet (sizes and times stay on
    the agents)."""
    files = request.app[PORT].fleet().models.get(request.match_info["folder"])
    if files is None:
        return web.Response(status=404)
    return web.json_response([{"name": f, "pathIndex": 0} for f in files])


async def get_embeddings(request: web.Request) -> web.Response:
    files = request.app[PORT].fleet().models.get("embeddings", [])
    return web.json_response([os.path.splitext(f)[0] for f in files])


async def get_extensions(request: web.Request) -> web.Response:
    """The web UI's own extension scripts (with the `ui` extra); the agents' custom nodes'
    web extensions live on the agents: the fleet serves none of those."""
    return web.json_response(list(request.app[FRONTEND].extensions))


async def get_features(request: web.Request) -> web.Response:
    return web.json_response(FEATURES)


async def get_system_stats(request: web.Request) -> web.Response:
    view = request.app[PORT].fleet()
    return web.json_response(system_stats(view.gpus, view.ram_total, view.ram_free, sys.argv))


ROUTES = [
    ("GET", "/object_info", get_object_info),
    ("GET", "/object_info/{node_class}", get_object_info),
    ("GET", "/models", get_models),
    ("GET", "/models/{folder}", get_model_folder),
    ("GET", "/experiment/models", get_model_folders),
    ("GET", "/experiment/models/{folder}", get_folder_models),
    ("GET", "/embeddings", get_embeddings),
    ("GET", "/extensions", get_extensions),
    ("GET", "/features", get_features),
    ("GET", "/system_stats", get_system_stats),
]

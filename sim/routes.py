"""HTTP and WebSocket handlers with ComfyUI's paths, bodies and status codes.

Every route is served at `/x` and `/api/x`. The simulator's own control routes live under
`/sim/` (`GET/POST /sim/faults`, `GET /sim/stats`).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import platform
import sys
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil
import structlog
from aiohttp import WSMsgType, web
from PIL import Image

from comfyfleet.sim import events
from comfyfleet.sim.faults import FaultError
from comfyfleet.sim.files import dir_for_type, inside, upload_folder
from comfyfleet.sim.nodes import object_info
from comfyfleet.sim.prompt_queue import QueueItem
from comfyfleet.sim.state import SIM_STATE, SimState
from comfyfleet.sim.validation import no_prompt_error, validate_prompt
from comfyfleet.sim.vram import MB

__all__ = ["add_routes"]

log = structlog.get_logger(__name__)

COMFYUI_VERSION = "0.3.64"
_SERVER_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"


def _state(request: web.Request) -> SimState:
    return request.app[SIM_STATE]


def _server_error() -> web.Response:
    return web.Response(status=500, text=_SERVER_ERROR)


async def _json_body(request: web.Request) -> Any:
    """The parsed body, or raises ValueError when it is not JSON."""
    raw = await request.read()
    return json.loads(raw.decode("utf-8"))


def server_features(state: SimState) -> dict[str, Any]:
    return {"supports_preview_metadata": True, "max_upload_size": state.config.max_upload_size}


# --- prompts and queue ---------------------------------------------------------------------


async def post_prompt(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        body = await _json_body(request)
    except ValueError:
        return _server_error()
    if not isinstance(body, dict):
        return _server_error()
    if "number" in body:
        try:
            number: int | float = float(body["number"])
        except (TypeError, ValueError):
            return _server_error()
    else:
        number = state.number
        if body.get("front"):
            number = -number
        state.number += 1
    if "prompt" not in body:
        state.stats.prompts_rejected += 1
        return web.json_response({"error": no_prompt_error(), "node_errors": {}}, status=400)
    prompt_id = str(body.get("prompt_id") or uuid.uuid4())
    partial = body.get("partial_execution_targets")
    result = validate_prompt(
        body["prompt"],
        state.validation_context(),
        partial if isinstance(partial, list) else None,
    )
    extra = body.get("extra_data")
    extra_data: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    if not result.ok:
        state.stats.prompts_rejected += 1
        log.info("sim.prompt_rejected", error=(result.error or {}).get("type"))
        return web.json_response(
            {"error": result.error, "node_errors": result.node_errors}, status=400
        )
    state.queue.put(QueueItem(number, prompt_id, result.prompt, extra_data, result.outputs))
    state.stats.prompts_submitted += 1
    log.info("sim.prompt_queued", prompt_id=prompt_id, number=number)
    return web.json_response(
        {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
    )


async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": _state(request).queue.remaining}})


async def get_queue(request: web.Request) -> web.Response:
    queue = _state(request).queue
    return web.json_response(
        {
            "queue_running": [item.as_list() for item in queue.running()],
            "queue_pending": [item.as_list() for item in queue.pending()],
        }
    )


async def post_queue(request: web.Request) -> web.Response:
    queue = _state(request).queue
    try:
        body = await _json_body(request)
    except ValueError:
        return _server_error()
    if isinstance(body, dict):
        if body.get("clear"):
            queue.clear()
        if isinstance(body.get("delete"), list):
            queue.delete(body["delete"])
    return web.Response(status=200)


async def post_interrupt(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request)
    except ValueError:
        body = {}
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    _state(request).executor.request_interrupt(prompt_id if isinstance(prompt_id, str) else None)
    return web.Response(status=200)


async def post_free(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        body = await _json_body(request)
    except ValueError:
        body = {}
    if isinstance(body, dict) and (body.get("unload_models") or body.get("free_memory")):
        if state.executor.current is None:
            state.vram.unload_all()
    return web.Response(status=200)


# --- history -------------------------------------------------------------------------------


async def get_history(request: web.Request) -> web.Response:
    query = request.rel_url.query
    try:
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query.get("offset", -1))
    except ValueError:
        return web.Response(status=400)
    return web.json_response(_state(request).queue.history(max_items, offset))


async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    return web.json_response(_state(request).queue.history_of(prompt_id))


async def post_history(request: web.Request) -> web.Response:
    queue = _state(request).queue
    try:
        body = await _json_body(request)
    except ValueError:
        return _server_error()
    if isinstance(body, dict):
        if body.get("clear"):
            queue.clear_history()
        if isinstance(body.get("delete"), list):
            queue.delete_history(body["delete"])
    return web.Response(status=200)


# --- files ---------------------------------------------------------------------------------


async def get_view(request: web.Request) -> web.StreamResponse:
    config = _state(request).config
    query = request.rel_url.query
    if "filename" not in query:
        return web.Response(status=404)
    filename = query["filename"]
    kind = query.get("type", "output")
    for suffix in (" [input]", " [output]", " [temp]"):
        if filename.endswith(suffix):
            filename, kind = filename[: -len(suffix)], suffix[2:-1]
    if not filename or filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    base = dir_for_type(config, kind)
    if base is None:
        return web.Response(status=400)
    folder = base
    if "subfolder" in query:
        folder = base / query["subfolder"]
        if not inside(base, folder):
            return web.Response(status=403)
    filename = os.path.basename(filename)
    path = folder / filename
    if not path.is_file():
        return web.Response(status=404)
    disposition = {"Content-Disposition": f'filename="{filename}"'}
    if "preview" in query:
        return _preview(path, query["preview"], query.get("channel", ""), disposition)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})


def _preview(path: Path, spec: str, channel: str, headers: dict[str, str]) -> web.Response:
    parts = spec.split(";")
    fmt = parts[0]
    if fmt not in ("webp", "jpeg") or "a" in channel:
        fmt = "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    buffer = BytesIO()
    with Image.open(path) as img:
        out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
        out.save(buffer, format=fmt, quality=quality)
    return web.Response(body=buffer.getvalue(), content_type=f"image/{fmt}", headers=headers)


async def post_upload_image(request: web.Request) -> web.Response:
    config = _state(request).config
    post = await request.post()
    image = post.get("image")
    if not isinstance(image, web.FileField) or not image.filename:
        return web.Response(status=400)
    kind = str(post.get("type") or "input")
    base = dir_for_type(config, kind)
    if base is None:
        base, kind = config.input_dir, "input"
    subfolder = str(post.get("subfolder", ""))
    filename = image.filename
    folder = upload_folder(base, subfolder, filename)
    if folder is None:
        return web.Response(status=400)
    path = folder / filename
    folder.mkdir(parents=True, exist_ok=True)
    data = image.file.read()
    overwrite = str(post.get("overwrite", "")) in ("true", "1")
    duplicate = False
    if not overwrite:
        stem, ext = os.path.splitext(image.filename)
        i = 1
        digest = hashlib.sha256(data).digest()
        while path.exists():
            if hashlib.sha256(path.read_bytes()).digest() == digest:
                duplicate = True
                break
            filename = f"{stem} ({i}){ext}"
            path = folder / filename
            i += 1
    if not duplicate:
        path.write_bytes(data)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})


# --- information ---------------------------------------------------------------------------


async def get_system_stats(request: web.Request) -> web.Response:
    state = _state(request)
    config = state.config
    memory = psutil.virtual_memory()
    argv = ["main.py", "--listen", config.host, "--port", str(config.port)]
    if config.device == "cpu":
        argv.insert(1, "--cpu")
        device: dict[str, Any] = {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": memory.total,
            "vram_free": memory.available,
            "torch_vram_total": memory.total,
            "torch_vram_free": memory.available,
        }
    else:
        device = {
            "name": f"cuda:0 {config.gpu_name} : cudaMallocAsync",
            "type": "cuda",
            "index": 0,
            "vram_total": state.vram.total_mb * MB,
            "vram_free": state.vram.free_mb * MB,
            "torch_vram_total": state.vram.used_mb * MB,
            "torch_vram_free": 0,
        }
    system = {
        "os": os.name,
        "ram_total": memory.total,
        "ram_free": memory.available,
        "comfyui_version": COMFYUI_VERSION,
        "required_frontend_version": "1.27.10",
        "installed_templates_version": "0.1.95",
        "required_templates_version": "0.1.95",
        "python_version": sys.version,
        "pytorch_version": "2.14.1+cu130",
        "embedded_python": False,
        "argv": argv,
    }
    return web.json_response({"system": system, "devices": [device]})


async def get_features(request: web.Request) -> web.Response:
    return web.json_response(server_features(_state(request)))


async def get_object_info(request: web.Request) -> web.Response:
    only = request.match_info.get("node_class")
    state = _state(request)
    info = object_info(state.catalogue_context(), only)
    have = state.catalogue
    return web.json_response({name: entry for name, entry in info.items() if name in have})


async def get_models(request: web.Request) -> web.Response:
    return web.json_response(["checkpoints", "loras", "vae", "upscale_models", "embeddings"])


async def get_model_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder == "checkpoints":
        return web.json_response([m.name for m in _state(request).config.models])
    if folder in ("loras", "vae", "upscale_models", "embeddings"):
        return web.json_response([])
    return web.Response(status=404)


# --- WebSocket -----------------------------------------------------------------------------


async def websocket(request: web.Request) -> web.WebSocketResponse:
    state = _state(request)
    hub = state.hub
    ws = web.WebSocketResponse(max_msg_size=state.config.max_upload_size)
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
    hub.attach(sid, ws)
    state.stats.ws_connections += 1
    log.debug("sim.ws_connected", sid=sid)
    try:
        await hub.send_now("status", events.status(state.queue.remaining, sid), ws)
        current = state.executor.current
        last_node = state.executor.last_node_id
        if current is not None and current.client_id == sid and last_node is not None:
            await hub.send_now("executing", events.executing_reconnect(last_node), ws)
        first = True
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                continue
            if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                flags = data.get("data")
                hub.set_flags(sid, flags if isinstance(flags, dict) else {})
                await hub.send_now("feature_flags", server_features(state), ws)
            first = False
    except (ConnectionError, RuntimeError) as exc:
        log.debug("sim.ws_error", sid=sid, error=str(exc))
    finally:
        hub.detach(sid, ws)
        log.debug("sim.ws_closed", sid=sid)
    return ws


# --- simulator control ---------------------------------------------------------------------


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_state(request).faults.to_json())


async def post_faults(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        body = await _json_body(request)
        state.faults.update(body)
    except (ValueError, FaultError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    state.executor.faults_changed()
    state.vram.leaked_mb = int(state.faults.leak_vram_mb)
    if len(state.ballast) != int(state.faults.leak_ram_mb) << 20:
        state.ballast = b"\x01" * (int(state.faults.leak_ram_mb) << 20)  # touched: real RSS
    log.warning("sim.faults_changed", **state.faults.to_json())
    return web.json_response(state.faults.to_json())


async def get_sim_stats(request: web.Request) -> web.Response:
    state = _state(request)
    ex = state.executor
    return web.json_response(
        {
            **state.stats.to_json(),
            "vram_total_mb": state.vram.total_mb,
            "vram_used_mb": state.vram.used_mb,
            "vram_free_mb": state.vram.free_mb,
            "vram_peak_mb": state.vram.peak_mb,
            "loaded_models": state.vram.loaded_models,
            "queue_remaining": state.queue.remaining,
            "running_prompt_id": None if ex.current is None else ex.current.prompt_id,
            "hung": ex.hung,
            "dead": ex.dead,
            "ws_clients": state.hub.client_count,
            "cached_outputs": len(ex.cache),
            "faults": state.faults.to_json(),
            "device": state.config.device,
            "python": platform.python_version(),
        }
    )


def add_routes(app: web.Application) -> None:
    table = [
        ("POST", "/prompt", post_prompt),
        ("GET", "/prompt", get_prompt),
        ("GET", "/queue", get_queue),
        ("POST", "/queue", post_queue),
        ("POST", "/interrupt", post_interrupt),
        ("POST", "/free", post_free),
        ("GET", "/history", get_history),
        ("GET", "/history/{prompt_id}", get_history_item),
        ("POST", "/history", post_history),
        ("GET", "/view", get_view),
        ("POST", "/upload/image", post_upload_image),
        ("GET", "/system_stats", get_system_stats),
        ("GET", "/features", get_features),
        ("GET", "/object_info", get_object_info),
        ("GET", "/object_info/{node_class}", get_object_info),
        ("GET", "/models", get_models),
        ("GET", "/models/{folder}", get_model_folder),
        ("GET", "/ws", websocket),
        ("GET", "/sim/faults", get_faults),
        ("POST", "/sim/faults", post_faults),
        ("GET", "/sim/stats", get_sim_stats),
    ]
    for prefix in ("", "/api"):
        for method, path, handler in table:
            app.router.add_route(method, prefix + path, handler)

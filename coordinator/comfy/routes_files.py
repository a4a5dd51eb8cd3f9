"""`/view`, `/upload/image`, `/upload/mask`: files, answered as ComfyUI answers (bare statuses
for refusals: 400 for a bad name or type, 403 for a subfolder that leaves its folder, 404 for a
file that is not there)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from comfyfleet.coordinator.comfy.auth import tenant
from comfyfleet.coordinator.comfy.errors import Bare
from comfyfleet.coordinator.comfy.files import (
    FOLDER_TYPES,
    UploadStore,
    parse_annotated,
    reencode,
    split_job_subfolder,
)
from comfyfleet.coordinator.comfy.history import comfy_refs
from comfyfleet.coordinator.comfy.keys import COMFY_CONFIG, PORT, UPLOADS
from comfyfleet.coordinator.comfy.port import FleetPort
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.media import served_as

__all__ = ["ROUTES"]


def _find(port: FleetPort, uploads: UploadStore, who: str, kind: str, sub: str, name: str) -> Path:
    """The file `/view` names: a job's output (its id leads the subfolder) or an upload."""
    job_sub = split_job_subfolder(sub) if kind in ("output", "temp") else None
    if job_sub is not None:
        job_id, comfy_sub = job_sub
        job = port.record(job_id)
        if job is None or job.tenant != who:
            raise Bare(404)
        for _, _, ref, entry in comfy_refs(job):
            if (ref.filename, ref.subfolder, ref.type) == (name, comfy_sub, kind):
                path = port.output_path(job, entry)
                if path.is_file():
                    return path
        raise Bare(404)
    path = uploads.path(who, kind, sub, name)
    if path is None:
        raise Bare(404)
    return path


async def get_view(request: web.Request) -> web.StreamResponse:
    query = request.query
    if "filename" not in query:
        raise Bare(404)
    raw = query["filename"]
    kind, _, name = parse_annotated(raw, default=query.get("type", "output"))
    if not name or raw.startswith("/") or ".." in raw:
        raise Bare(400)
    if kind not in FOLDER_TYPES:
        raise Bare(400)
    sub = query.get("subfolder", "")
    if ".." in sub.replace("\\", "/").split("/") or sub.startswith("/"):
        raise Bare(403)
    path = _find(request.app[PORT], request.app[UPLOADS], tenant(request), kind, sub, name)
    disposition = {"Content-Disposition": f'filename="{name}"'}
    if "preview" in query or query.get("channel") in ("rgb", "a"):
        data = await asyncio.to_thread(path.read_bytes)
        try:
            made = await asyncio.to_thread(
                reencode, data, query.get("preview"), query.get("channel")
            )
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
            raise Bare(400) from None
        if made is not None:
            return web.Response(body=made[0], content_type=made[1], headers=disposition)
    # the one allow-list (shared/media.py): where ComfyUI would send an SVG or XML file as itself
    # (script on this origin), it is a download here
    return web.FileResponse(
        path,
        headers={
            **disposition,
            "Content-Type": served_as(name).content_type,
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _form(request: web.Request) -> Any:
    limit = request.app[COMFY_CONFIG].comfy_max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(limit, request.content_length)
    if not request.content_type.startswith("multipart/"):
        raise Bare(400)
    try:
        return await request.post()
    except (ValueError, AssertionError):
        raise Bare(400) from None


def _file_bytes(field: Any) -> tuple[str, bytes] | None:
    if not isinstance(field, web.FileField) or not field.filename:
        return None
    return field.filename, field.file.read()


def _flag(value: Any) -> bool:
    return isinstance(value, str) and value in ("true", "1")


def _save(request: web.Request, post: Any, data: bytes | None = None) -> web.Response:
    image = _file_bytes(post.get("image"))
    if image is None:
        raise Bare(400)
    filename, raw = image
    kind = post.get("type") or "input"
    subfolder = post.get("subfolder") or ""
    if not isinstance(kind, str) or not isinstance(subfolder, str):
        raise Bare(400)
    try:
        answer = request.app[UPLOADS].save(
            tenant(request),
            filename,
            raw if data is None else data,
            kind=kind,
            subfolder=subfolder,
            overwrite=_flag(post.get("overwrite")),
        )
    except InvalidInput as exc:
        raise Bare(403 if exc.field == "subfolder" else 400) from None
    return web.json_response(answer)


async def upload_image(request: web.Request) -> web.Response:
    post = await _form(request)
    return await asyncio.to_thread(_save, request, post)


async def upload_mask(request: web.Request) -> web.Response:
    """The original image (`original_ref`) with the uploaded mask's alpha, saved as an upload."""
    post = await _form(request)
    image = _file_bytes(post.get("image"))
    try:
        ref = json.loads(post.get("original_ref") or "")
        name = str(ref["filename"])
    except (ValueError, KeyError, TypeError):
        raise Bare(400) from None
    if image is None or not name or name.startswith("/") or ".." in name:
        raise Bare(400)
    kind, _, base = parse_annotated(name, default=str(ref.get("type") or "output"))
    sub = str(ref.get("subfolder") or "")
    if kind not in FOLDER_TYPES or not base:
        raise Bare(400)
    if ".." in sub.replace("\\", "/").split("/") or sub.startswith("/"):
        raise Bare(403)
    path = _find(request.app[PORT], request.app[UPLOADS], tenant(request), kind, sub, base)
    try:
        merged = await asyncio.to_thread(_apply_mask, path, image[1])
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        raise Bare(400) from None
    return await asyncio.to_thread(_save, request, post, merged)


def _apply_mask(original: Path, mask: bytes) -> bytes:
    with Image.open(original) as img, Image.open(io.BytesIO(mask)) as mask_img:
        info = getattr(img, "text", {}) or {}
        rgba = img.convert("RGBA")
        rgba.putalpha(mask_img.convert("RGBA").getchannel("A").resize(rgba.size))
        from PIL.PngImagePlugin import PngInfo

        meta = PngInfo()
        for key, value in info.items():
            meta.add_text(key, str(value))
        out = io.BytesIO()
        rgba.save(out, format="PNG", compress_level=4, pnginfo=meta)
        return out.getvalue()


ROUTES = [
    ("GET", "/view", get_view),
    ("POST", "/upload/image", upload_image),
    ("POST", "/upload/mask", upload_mask),
]

"""`/api/v2/assets...`: upload, from-hash, by-hash, get, content, delete.

Uploaded assets live in the tenant's durable index (`assets.AssetIndex`) over files in its
upload folder; a job's outputs are assets too (id `<job id>.<n>`, see `shapes`), served from the
fleet's output store. Hashes are blake3 of the received bytes, computed here; a client's
`expected_hash` is checked, never trusted. Model files cannot be placed: the fleet's models live
on its GPU hosts (`422 invalid_request`, as comfy-api-proxy answers without a ComfyUI folder).
"""

from __future__ import annotations

import asyncio
import mimetypes
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
from aiohttp import BodyPartReader, web

from comfyfleet.coordinator.comfy.auth import tenant
from comfyfleet.coordinator.comfy.history import comfy_refs
from comfyfleet.coordinator.comfy.keys import ASSETS, COMFY_CONFIG, PORT, UPLOADS
from comfyfleet.coordinator.comfy.prompts import job_id_for
from comfyfleet.coordinator.comfy.v2.assets import AssetRecord, split_file_path
from comfyfleet.coordinator.comfy.v2.errors import V2Error, read_json
from comfyfleet.coordinator.comfy.v2.routes_jobs import base_url
from comfyfleet.coordinator.comfy.v2.shapes import (
    RETENTION_S,
    iso,
    outputs_json,
    parse_output_id,
)
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.status import JobStatus

__all__ = ["ROUTES"]

URL_TTL_S = 86_400.0  # how long an asset's `url` is said to be good (it is never signed)
MAX_FIELD = 64 << 10  # a text field of the upload form
MAX_TAGS = 64


def _unprocessable(message: str) -> V2Error:
    return V2Error(422, "invalid_request", message)


def asset_json(record: AssetRecord, base: str, created_new: bool | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": record.id,
        "hash": record.hash,
        "size_bytes": record.size,
        "content_type": record.content_type,
        "file_path": record.file_path,
        "created_at": iso(record.created_at),
        "url": f"{base}/api/v2/assets/{record.id}/content",
        "url_expires_at": iso(datetime.now(UTC).timestamp() + URL_TTL_S),
        "expires_at": None,
        "job_id": None,
    }
    if created_new is not None:
        body["created_new"] = created_new
    return body


async def _text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(1 << 14):
        data.extend(chunk)
        if len(data) > MAX_FIELD:
            raise _unprocessable(f"form field '{part.name}' is longer than {MAX_FIELD} bytes.")
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        raise _unprocessable(f"form field '{part.name}' is not UTF-8 text.") from None


async def _read_form(
    request: web.Request, limit: int
) -> tuple[bytes | None, str | None, dict[str, str], list[str]]:
    """(file bytes, the file part's content type, text fields, tags) of a multipart upload."""
    if not request.content_type.startswith("multipart/"):
        raise _unprocessable("Expected multipart/form-data.")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError):
        raise _unprocessable("Malformed multipart body.") from None
    data: bytearray | None = None
    part_type: str | None = None
    fields: dict[str, str] = {}
    tags: list[str] = []
    try:
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.name == "file":
                part_type = part.headers.get("Content-Type")
                data = bytearray()
                while chunk := await part.read_chunk(1 << 16):
                    data.extend(chunk)
                    if len(data) > limit:
                        raise V2Error(413, "payload_too_large", f"Upload exceeds {limit} bytes.")
            elif part.name == "tags":
                if len(tags) >= MAX_TAGS:
                    raise _unprocessable(f"at most {MAX_TAGS} tags.")
                tags.append(await _text(part))
            else:
                fields[part.name] = await _text(part)
    except (ValueError, AssertionError, KeyError):
        raise _unprocessable("Malformed multipart body.") from None
    return (bytes(data) if data is not None else None), part_type, fields, tags


async def upload(request: web.Request) -> web.Response:
    limit = request.app[COMFY_CONFIG].comfy_max_upload_bytes
    if request.content_length is not None and request.content_length > limit + MAX_FIELD * 8:
        raise V2Error(413, "payload_too_large", f"Upload exceeds {limit} bytes.")
    data, part_type, fields, tags = await _read_form(request, limit)
    if data is None:
        raise _unprocessable("Missing 'file' part.")
    file_path = fields.get("file_path")
    if not file_path:
        raise _unprocessable("Missing 'file_path'.")
    try:
        is_model, subfolder, name = split_file_path(file_path)
    except ValueError as exc:
        raise _unprocessable(f"'file_path' {exc}.") from None
    if is_model:
        raise _unprocessable(
            "The fleet does not place model files: models live on its GPU hosts "
            "(upload inputs such as images; put models in each agent's ComfyUI)."
        )
    digest = "blake3:" + (await asyncio.to_thread(lambda: blake3.blake3(data).hexdigest()))
    expected = fields.get("expected_hash")
    if expected and expected.lower() != digest:
        raise V2Error(409, "hash_mismatch", "Client-declared hash does not match the bytes.")
    who, assets, base = tenant(request), request.app[ASSETS], base_url(request)
    existing = await asyncio.to_thread(assets.by_hash, who, digest)
    if existing is not None:  # bytes we already have: that asset
        return web.json_response(asset_json(existing, base, False), status=200)
    content_type = (
        fields.get("content_type")
        or part_type
        or mimetypes.guess_type(name)[0]
        or "application/octet-stream"
    )

    def store() -> AssetRecord:
        try:
            saved = request.app[UPLOADS].save(who, name, data, subfolder=subfolder)
        except InvalidInput as exc:
            raise _unprocessable(f"'file_path' {exc.message}.") from None
        where = (saved["subfolder"], saved["name"])
        return assets.add(who, digest, len(data), content_type[:255], file_path, where, tuple(tags))

    record = await asyncio.to_thread(store)
    return web.json_response(asset_json(record, base, True), status=201)


async def from_hash(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise _unprocessable("Body must be a JSON object.")
    digest = body.get("hash")
    if not isinstance(digest, str) or not digest:
        raise _unprocessable("Missing 'hash'.")
    for key in ("file_path",):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _unprocessable(f"'{key}' must be a string.")
    tags = body.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise _unprocessable("'tags' must be a list of strings.")
    record = await asyncio.to_thread(request.app[ASSETS].by_hash, tenant(request), digest)
    if record is None:  # a miss and "not yours" are the same answer
        raise V2Error(404, "blob_not_found", "No blob the caller may mint from.")
    return web.json_response(asset_json(record, base_url(request), False), status=200)


async def by_hash(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(
        request.app[ASSETS].by_hash, tenant(request), request.match_info["hash"]
    )
    return web.Response(status=200 if found is not None else 404)


def _output(request: web.Request, raw_id: str) -> tuple[JobRecord, dict[str, Any], Path] | None:
    """A job output named by its asset id, in the caller's tenant: (job, its v2 Output, path)."""
    parsed = parse_output_id(raw_id)
    if parsed is None:
        return None
    job_uuid, index = parsed
    who, port = tenant(request), request.app[PORT]
    job = port.record(job_id_for(who, job_uuid))
    if job is None or job.tenant != who or job.status != JobStatus.COMPLETED:
        return None
    refs = comfy_refs(job)
    if index >= len(refs):
        return None
    output = outputs_json(job, job_uuid, base_url(request))[index]
    return job, output, port.output_path(job, refs[index][3])


def _unknown() -> V2Error:
    return V2Error(404, "not_found", "Unknown asset id.")


async def get_asset(request: web.Request) -> web.Response:
    asset_id, base = request.match_info["id"], base_url(request)
    record = await asyncio.to_thread(request.app[ASSETS].get, tenant(request), asset_id)
    if record is not None:
        return web.json_response(asset_json(record, base, None))
    found = await asyncio.to_thread(_output, request, asset_id)
    if found is None:
        raise _unknown()
    job, output, _ = found
    ended = job.timestamps.get(JobStatus.COMPLETED.value, job.updated_at)
    return web.json_response(
        {
            "id": output["id"],
            "hash": None,
            "size_bytes": output["size_bytes"],
            "content_type": output["content_type"],
            "file_path": output["name"],
            "created_at": iso(ended),
            "url": output["url"],
            "url_expires_at": output["url_expires_at"],
            "expires_at": iso(job.created_at + RETENTION_S),
            "job_id": output["job_id"],
        }
    )


def _gone() -> V2Error:
    return V2Error(
        404,
        "output_unavailable",
        "The asset is registered but its bytes are no longer stored. Retrying cannot help.",
    )


async def content(request: web.Request) -> web.StreamResponse:
    asset_id, who = request.match_info["id"], tenant(request)
    record = await asyncio.to_thread(request.app[ASSETS].get, who, asset_id)
    if record is not None:
        path = request.app[UPLOADS].path(who, "input", record.subfolder, record.name)
        if path is None:
            raise _gone()
        return web.FileResponse(path, headers={"Content-Type": record.content_type})
    found = await asyncio.to_thread(_output, request, asset_id)
    if found is None:
        raise _unknown()
    _, output, path = found
    if not path.is_file():
        raise _gone()
    return web.FileResponse(path, headers={"Content-Type": output["content_type"]})


async def delete(request: web.Request) -> web.Response:
    """Removes the record, and its file once no other asset of the tenant stands on it."""
    asset_id, who = request.match_info["id"], tenant(request)

    def remove() -> bool:
        record, last = request.app[ASSETS].delete(who, asset_id)
        if record is None:
            return False
        if last:
            path = request.app[UPLOADS].path(who, "input", record.subfolder, record.name)
            if path is not None:
                path.unlink(missing_ok=True)
        return True

    # finish the deletion even if the client goes away meanwhile
    if not await asyncio.shield(asyncio.to_thread(remove)):
        raise _unknown()
    return web.Response(status=204)


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/api/v2/assets", upload),
    ("POST", "/api/v2/assets/from-hash", from_hash),
    ("HEAD", "/api/v2/assets/by-hash/{hash}", by_hash),
    ("GET", "/api/v2/assets/{id}", get_asset),
    ("GET", "/api/v2/assets/{id}/content", content),
    ("DELETE", "/api/v2/assets/{id}", delete),
]

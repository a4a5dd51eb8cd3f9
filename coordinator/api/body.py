"""Reading request bodies: size caps, content types, decoding into message types."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import msgspec
from aiohttp import web

from comfyfleet.coordinator.api.keys import CONFIG
from comfyfleet.coordinator.errors import CoordinatorError
from comfyfleet.shared import codec
from comfyfleet.shared.errors import InvalidInput

T = TypeVar("T")


class TooLarge(CoordinatorError):
    status = 413
    code = "too_large"


class UnsupportedType(CoordinatorError):
    status = 415
    code = "unsupported_media_type"


class SlowClient(CoordinatorError):
    status = 408
    code = "request_timeout"


async def read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body of {request.content_length} bytes exceeds {limit} bytes", "body")
    if request.content.is_eof():  # all of it came with the headers (most agent reports)
        return await _read(request, limit)
    timeout = request.app[CONFIG].body_read_timeout_s
    try:
        async with asyncio.timeout(timeout):  # a client too slow sending its body gets 408
            return await _read(request, limit)
    except TimeoutError:
        raise SlowClient(f"body not received within {timeout:g} s", "body") from None


async def _read(request: web.Request, limit: int) -> bytes:
    if request.content_length:  # one copy out of aiohttp's buffers (8 MiB upload chunks)
        try:
            return await request.content.readexactly(request.content_length)
        except asyncio.IncompleteReadError as exc:
            raise InvalidInput(
                "body", f"body ended after {len(exc.partial)} of {request.content_length} bytes"
            ) from None
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"body exceeds {limit} bytes", "body")
    return bytes(data)


def body_type(request: web.Request, allow_msgpack: bool) -> str:
    ctype = request.content_type
    if ctype == codec.JSON or (ctype == "application/octet-stream" and not request.can_read_body):
        return codec.JSON
    if allow_msgpack and ctype == codec.MSGPACK:
        return codec.MSGPACK
    allowed = "application/json" + (" or application/msgpack" if allow_msgpack else "")
    raise UnsupportedType(f"Content-Type must be {allowed}, not {ctype!r}", "Content-Type")


async def decode_body(
    request: web.Request, type_: type[T], limit: int, allow_msgpack: bool = False
) -> T:
    ctype = body_type(request, allow_msgpack)
    data = await read_limited(request, limit)
    if not data:
        raise InvalidInput("body", "request body is empty", "missing")
    if ctype == codec.JSON:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                "body", f"body is not valid UTF-8 at byte {exc.start}", "malformed"
            ) from None
    return codec.decode(data, type_, ctype)


def reply(
    request: web.Request, obj: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Answer in msgpack when the caller spoke msgpack (agents), else JSON."""
    if codec.MSGPACK in request.headers.get("Accept", "") or (
        request.content_type == codec.MSGPACK
    ):
        return web.Response(
            status=status,
            body=codec.encode(obj, codec.MSGPACK),
            content_type=codec.MSGPACK,
            headers=headers,
        )
    return web.Response(
        status=status,
        body=msgspec.json.encode(obj),
        content_type="application/json",
        headers=headers,
    )

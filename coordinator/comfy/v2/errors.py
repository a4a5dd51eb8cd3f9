"""Refusals in Comfy API v2's envelope: `{"error": {"code", "message", "details"}}`.

Handlers raise `V2Error` (or the coordinator's and shared errors, mapped here); `v2_errors` is
what the facade's errors middleware runs for a `/api/v2/` request, so every refusal on those
routes, unknown routes and methods included, has this shape and none is a 5xx.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from aiohttp import web

from comfyfleet.coordinator.admission import retry_after
from comfyfleet.coordinator.api.body import read_limited
from comfyfleet.coordinator.api.errors import Handler
from comfyfleet.coordinator.comfy.keys import COMFY_CONFIG
from comfyfleet.coordinator.errors import CoordinatorError
from comfyfleet.shared.errors import InvalidInput, SharedError

__all__ = ["PREFIX", "V2Error", "is_v2", "read_json", "v2_error", "v2_errors"]

log = structlog.get_logger("coordinator.comfy.v2")

PREFIX = "/api/v2/"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
# the coordinator's codes that v2 names otherwise
_CODES = {"unprocessable": "invalid_workflow", "overloaded": "queue_full"}


class V2Error(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def is_v2(path: str) -> bool:
    return path.startswith(PREFIX) or path == PREFIX.rstrip("/")


def v2_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.json_response(body, status=status, headers=headers)


def invalid(field: str, problem: str) -> V2Error:
    return V2Error(400, "invalid_request", f"'{field}' {problem}", {"field": field})


async def v2_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except V2Error as exc:
        return v2_error(exc.status, exc.code, exc.message, exc.details, exc.headers)
    except InvalidInput as exc:
        field = exc.field or "body"
        return v2_error(400, "invalid_request", f"{field}: {exc.message}", {"field": field})
    except CoordinatorError as exc:
        headers = retry_after(exc, request.app[COMFY_CONFIG].retry_after_s)
        code = _CODES.get(exc.code, exc.code)
        details = {"field": exc.field} if exc.field else None
        return v2_error(exc.status, code, exc.message, details, headers)
    except SharedError as exc:
        return v2_error(409, "conflict", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "invalid_request")
        return v2_error(exc.status, code, exc.reason or code, None, _allow(exc))
    except Exception:
        log.exception("comfy_v2_unhandled_error", path=request.path, method=request.method)
        return v2_error(500, "internal", "internal error; see the coordinator log")


def _allow(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


async def read_json(request: web.Request) -> Any:
    """The JSON body (bounded like every coordinator body)."""
    raw = await read_limited(request, request.app[COMFY_CONFIG].max_body_bytes)
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise V2Error(400, "invalid_request", "Body must be JSON.") from None

"""The facade's refusals in ComfyUI's error shape, in one middleware.

ComfyUI answers a bad prompt with `{"error": {"type", "message", "details", "extra_info"},
"node_errors": {...}}`; where ComfyUI itself would fail with a 500 (a body that is not JSON, a
`max_items` that is no number, ...) the facade answers 400 in that same shape, naming the field
in `details`. Routes that ComfyUI answers with a bare status (`/view`, `/upload/image`) raise
`Bare`. Comfy API v2's routes (`/api/v2/...`) answer in v2's own envelope (`v2.errors`).
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
from comfyfleet.coordinator.comfy.v2.errors import is_v2, v2_errors
from comfyfleet.coordinator.errors import CoordinatorError
from comfyfleet.shared.errors import InvalidInput, SharedError

__all__ = ["Bare", "comfy_error", "errors_middleware", "read_json"]

log = structlog.get_logger("coordinator.comfy")


class Bare(Exception):
    """Answer with this status and an empty body, as ComfyUI does on this route."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def comfy_error(
    status: int,
    kind: str,
    message: str,
    details: str = "",
    headers: dict[str, str] | None = None,
) -> web.Response:
    error = {"type": kind, "message": message, "details": details, "extra_info": {}}
    return web.json_response({"error": error, "node_errors": {}}, status=status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_v2(request.path):
        return await v2_errors(request, handler)
    try:
        return await handler(request)
    except Bare as exc:
        return web.Response(status=exc.status)
    except InvalidInput as exc:
        return comfy_error(400, "invalid_prompt", exc.message, exc.field or "")
    except CoordinatorError as exc:
        headers = retry_after(exc, request.app[COMFY_CONFIG].retry_after_s)
        status = 400 if exc.status == 422 else exc.status  # ComfyUI refuses prompts with 400
        return comfy_error(status, exc.code, exc.message, exc.field or "", headers)
    except SharedError as exc:
        return comfy_error(409, "conflict", str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return comfy_error(413, "too_large", f"body too large: {exc.text}", "body")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("comfy_unhandled_error", path=request.path, method=request.method)
        return comfy_error(500, "internal", "internal error; see the coordinator log")


async def read_json(request: web.Request, *, empty: Any = None) -> Any:
    """The JSON body (bounded like every coordinator body); `empty` for no body at all."""
    raw = await read_limited(request, request.app[COMFY_CONFIG].max_body_bytes)
    if not raw.strip():
        if empty is not None:
            return empty
        raise InvalidInput("body", "expected a JSON body")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidInput("body", f"not valid JSON: {exc}") from None

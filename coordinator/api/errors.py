"""One middleware maps domain errors to HTTP: `{"error": {"code", "message", "field"}}`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import web

from comfyfleet.coordinator.admission import retry_after
from comfyfleet.coordinator.api.keys import CONFIG
from comfyfleet.coordinator.errors import CoordinatorError
from comfyfleet.shared.errors import InvalidInput, SharedError

log = structlog.get_logger("coordinator.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers=headers,
    )


Refused = tuple[int, str, str, str | None]  # status, code, message, field


def _shared_refusal(exc: SharedError) -> Refused:
    if isinstance(exc, InvalidInput):
        status = 422 if exc.code in ("ui_format", "unsupported") else 400
        return status, exc.code, exc.message, exc.field
    return 409, "conflict", str(exc), None


def refusal(exc: Exception) -> Refused | None:
    """The 4xx that answers `exc` (as the middleware does); None if it is no refusal."""
    if isinstance(exc, SharedError):
        return _shared_refusal(exc)
    if isinstance(exc, CoordinatorError) and exc.status < 500:
        return exc.status, exc.code, exc.message, exc.field
    return None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SharedError as exc:  # InvalidInput among them
        return error_response(*_shared_refusal(exc))
    except CoordinatorError as exc:
        if exc.status >= 500:
            log.warning("refused", path=request.path, code=exc.code, message=exc.message)
        return error_response(
            exc.status,
            exc.code,
            exc.message,
            exc.field,
            headers=retry_after(exc, request.app[CONFIG].retry_after_s),
        )
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, "too_large", f"body too large: {exc.text}", "body")
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = exc.reason.lower().replace(" ", "_")
            return error_response(
                exc.status,
                code,
                exc.text or exc.reason,
                None,
                headers={
                    k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")
                },
            )
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return error_response(500, "internal", "internal error; see the coordinator log")

"""The coordinator's one base exception and its domain errors (mapped to HTTP in one middleware)."""

from __future__ import annotations

from comfyfleet.shared.errors import InvalidInput


class CoordinatorError(Exception):
    """Base of every exception raised by comfyfleet.coordinator."""

    status = 500
    code = "internal"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(CoordinatorError):
    status = 404
    code = "not_found"


class StaleAttempt(CoordinatorError):
    """The agent spoke about an attempt that is no longer the job's current one."""

    status = 409
    code = "stale_attempt"


class Conflict(CoordinatorError):
    status = 409
    code = "conflict"


class Unprocessable(CoordinatorError):
    status = 422
    code = "unprocessable"


class StoreUnavailable(CoordinatorError):
    status = 503
    code = "store_unavailable"


class NotLeader(StoreUnavailable):
    """A write that only the leader may make, refused: this coordinator does not hold the lease
    (a follower), or its epoch has ended (the store's fence refused it; nothing was written)."""

    code = "not_leader"


__all__ = [
    "CoordinatorError",
    "NotFound",
    "StaleAttempt",
    "Conflict",
    "Unprocessable",
    "StoreUnavailable",
    "NotLeader",
    "InvalidInput",
]

"""Admission control: pure checks that shed load before any work is done (DESIGN.md §6)."""

from __future__ import annotations

from comfyfleet.coordinator.errors import CoordinatorError


class Overloaded(CoordinatorError):
    """Too much queued work: the client should come back after `retry_after_s`."""

    status = 429
    code = "overloaded"

    def __init__(self, message: str, field: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s


def check_queue(waiting: int, limit: int, retry_after_s: int) -> None:
    """Refuse a new job when `waiting` jobs already wait for a GPU and `limit` is reached.

    `limit <= 0` means no bound.
    """
    if 0 < limit <= waiting:
        raise Overloaded(
            f"the queue holds {waiting} jobs, its limit is {limit}; retry in {retry_after_s} s",
            "queue",
            retry_after_s,
        )


def retry_after(exc: BaseException, default_s: int) -> dict[str, str]:
    """The Retry-After header for a refusal that a client may retry (429 and 503)."""
    status = getattr(exc, "status", 0)
    if status not in (429, 503):
        return {}
    seconds = getattr(exc, "retry_after_s", None) or default_s
    return {"Retry-After": str(max(1, int(seconds)))}

"""One retry policy for calls across the network (the agent's calls to the coordinator and to
ComfyUI): which failures retry, how long to wait, and when to give up.

- A call that got no answer (connection refused or reset, a timeout) retries; so does an answer
  with status 408, 429 or 5xx. Any other answer is final (a 4xx is the caller's to handle).
- A `Retry-After` the server sent is honoured (capped at `max_retry_after_s`, plus jitter);
  otherwise the wait grows exponentially from `wait_initial_s`, capped at `wait_max_s`, with up
  to `wait_jitter_s` of random jitter so a fleet does not retry in step.
- Each call site picks its limit: a `deadline_s`, a number of `attempts`, or neither (retry until
  it works: reports that must arrive).

Exceptions say they are worth retrying by deriving from `Transient` and carrying the HTTP status
(None: no answer) and the server's Retry-After. The loop itself is `stamina` (exponential backoff
with jitter, attempt and time limits, retries logged through structlog).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina
import structlog

T = TypeVar("T")


class Transient:
    """Mixin for an exception raised when a call got no usable answer.

    `status` is the HTTP status when one came back (None: no answer at all); `retry_after_s`
    the server's Retry-After in seconds, when it sent one.
    """

    status: int | None = None
    retry_after_s: float | None = None


def retryable_status(status: int | None) -> bool:
    """No answer, 408 (request timeout), 429 (too many requests) and every 5xx retry."""
    return status is None or status in (408, 429) or 500 <= status <= 599


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), None if the
    header is absent or unreadable. `now` is the wall clock (time.time())."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    deadline_s: float | None = None  # give up after this long in all; None: no time limit
    attempts: int | None = None  # give up after this many tries; None: no count limit
    wait_initial_s: float = 0.2
    wait_max_s: float = 10.0
    wait_jitter_s: float = 1.0
    max_retry_after_s: float = 120.0  # a longer Retry-After is waited for this long
    retry_also: tuple[type[Exception], ...] = ()  # retried (with backoff) although final

    def backoff(self, exc: Exception) -> bool | float:
        """stamina's hook: False (do not retry), True (exponential backoff), or the seconds to
        wait (the server's Retry-After)."""
        if not isinstance(exc, Transient) or not retryable_status(exc.status):
            return isinstance(exc, self.retry_also)
        if exc.retry_after_s is None:
            return True
        wait = min(max(exc.retry_after_s, 0.0), self.max_retry_after_s)
        return wait + random.uniform(0.0, self.wait_jitter_s)

    async def call(self, fn: Callable[[], Awaitable[T]], what: str = "") -> T:
        """`await fn()` until it returns, raises something final, or the limit is reached (then
        the last failure is raised). `what` names the call in the retry log lines."""
        with structlog.contextvars.bound_contextvars(call=what or None):
            async for attempt in stamina.retry_context(
                on=self.backoff,
                attempts=self.attempts,
                timeout=self.deadline_s,
                wait_initial=self.wait_initial_s,
                wait_max=self.wait_max_s,
                wait_jitter=self.wait_jitter_s,
            ):
                with attempt:
                    return await fn()
        raise AssertionError("unreachable: stamina raises the last failure")


ONCE = RetryPolicy(attempts=1)  # the caller loops anyway (heartbeats, long polls)

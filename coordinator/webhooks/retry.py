"""When a webhook message is tried again: capped exponential backoff with jitter, for a limited
time. Pure: the random draw is passed in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first_s: float = 1.0  # the wait after the first failed try
    cap_s: float = 600.0  # no wait is longer
    give_up_s: float = 86_400.0  # no try starts later than this after the message was written


def retry_at(
    policy: RetryPolicy, attempts: int, created_at: float, now: float, draw: float
) -> float | None:
    """When to try again after `attempts` failed tries, or None to give up.

    The wait is `min(cap, first * 2**(attempts-1))`, scaled by a factor in [0.5, 1) from `draw`
    in [0, 1) ("equal jitter": receivers that failed together do not retry together, and the
    wait still grows). The last try is placed at the give-up time when the wait runs past it.
    """
    deadline = created_at + policy.give_up_s
    if now >= deadline:
        return None
    exponent = min(max(attempts - 1, 0), 60)
    wait = min(policy.cap_s, policy.first_s * 2.0**exponent)
    wait *= 0.5 + 0.5 * min(max(draw, 0.0), 1.0)
    return min(now + wait, deadline)

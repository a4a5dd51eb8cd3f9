"""Several coordinator URLs, as agents, the CLI and the Python client know them (DESIGN.md §8).

`Endpoints` holds the URLs (given as a list, or comma-separated) and the one to use now. A
failure (no connection, a timeout, a 5xx) moves on to the next URL; a redirect from a follower
(307 with the leader's URL in `Location`) moves to the leader, added to the list if it was not in
it. Between tries callers wait `backoff_s`: exponential and jittered, so that a fleet whose
coordinator died does not come back in one wave.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from urllib.parse import urlsplit

from comfyfleet.shared.errors import InvalidInput


def parse_urls(value: str | Iterable[str], field: str = "coordinator") -> tuple[str, ...]:
    """The URLs in `value` (comma-separated text, or several of them), in order, without
    duplicates or a trailing slash; InvalidInput naming `field` for none or a non-http(s) one."""
    parts = [value] if isinstance(value, str) else list(value)
    urls: list[str] = []
    for part in parts:
        for raw in part.split(","):
            url = raw.strip().rstrip("/")
            if not url:
                continue
            if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
                raise InvalidInput(field, f"{url!r} is not an http(s) URL")
            if url not in urls:
                urls.append(url)
    if not urls:
        raise InvalidInput(field, "no coordinator URL given")
    return tuple(urls)


def origin(url: str) -> str:
    """scheme://host[:port] of `url` (where a redirect's Location points)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def backoff_s(
    failures: int, base_s: float = 0.1, cap_s: float = 2.0, rng: random.Random | None = None
) -> float:
    """How long to wait after `failures` failures in a row: half of min(cap, base * 2^failures)
    plus a random part up to the other half."""
    ceiling = min(cap_s, base_s * 2 ** max(0, min(failures, 30)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class Endpoints:
    def __init__(self, urls: str | Iterable[str]) -> None:
        self.urls = list(parse_urls(urls))
        self.index = 0

    @property
    def current(self) -> str:
        return self.urls[self.index]

    def failed(self) -> str:
        """The current URL failed: move on to the next one."""
        self.index = (self.index + 1) % len(self.urls)
        return self.current

    def redirected(self, location: str) -> str:
        """A follower named the leader: use it from now on (InvalidInput for a Location that is
        not an absolute http(s) URL)."""
        (leader,) = parse_urls(origin(location), "Location")
        if leader not in self.urls:
            self.urls.append(leader)
        self.index = self.urls.index(leader)
        return self.current

    def __str__(self) -> str:
        return ",".join(self.urls)

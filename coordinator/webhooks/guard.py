"""The SSRF guard of webhook deliveries: a webhook URL may not reach loopback, link-local,
private or otherwise special addresses unless `webhook_allow_private_addresses` says so.

Checked twice: when a URL is given (its syntax, and a literal IP address), and on every
delivery, where `GuardedResolver` checks every address a host name resolves to before aiohttp
connects to any of them (so a name that changed meanwhile, DNS rebinding, is caught too).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import MAX_WEBHOOK_URL

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(OSError):
    """A webhook host resolved to an address the guard refuses."""


def blocked_reason(ip: IP) -> str | None:
    """Why the guard refuses `ip`, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((f"{ip} is a {what} address" for what, hit in checks if hit), None)


def literal_ip(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_url(url: str, allow_private: bool, field: str = "webhook_url") -> URL:
    """A webhook URL as yarl parses it; InvalidInput naming `field` when it cannot be one."""
    if not isinstance(url, str) or not 0 < len(url) <= MAX_WEBHOOK_URL:
        raise InvalidInput(field, f"must be a URL of 1 to {MAX_WEBHOOK_URL} characters")
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise InvalidInput(field, f"{url!r} is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInput(field, "must be an absolute http:// or https:// URL with a host")
    if parsed.user is not None or parsed.password is not None:
        raise InvalidInput(field, "must not carry a user name or password")
    try:
        parsed.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise InvalidInput(field, "has an invalid port") from None
    ip = literal_ip(parsed.host)
    if ip is not None and not allow_private:
        why = blocked_reason(ip)
        if why is not None:
            raise InvalidInput(
                field,
                f"{why}; set webhook_allow_private_addresses to allow it",
                "forbidden_address",
            )
    if parsed.host.lower() in ("localhost", "localhost.") and not allow_private:
        raise InvalidInput(
            field,
            "localhost is a loopback address; set webhook_allow_private_addresses to allow it",
            "forbidden_address",
        )
    return parsed


def check_addresses(host: str, addresses: list[str]) -> None:
    """Raise BlockedAddress if any address `host` resolved to is refused."""
    for address in addresses:
        ip = literal_ip(address)
        why = "not an IP address" if ip is None else blocked_reason(ip)
        if why is not None:
            raise BlockedAddress(f"webhook host {host} resolves to {address}: {why}")


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing a host if any address it resolves to is refused."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self.inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        check_addresses(host, [r["host"] for r in found])
        return found

    async def close(self) -> None:
        await self.inner.close()


def resolver(allow_private: bool) -> Any:
    """The resolver for the webhook client session (aiohttp's own when everything is allowed)."""
    return ThreadedResolver() if allow_private else GuardedResolver()

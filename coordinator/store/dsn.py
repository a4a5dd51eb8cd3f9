"""The `store` setting: unset for the SQLite file in the data dir, or a postgresql:// URL.

Pure functions: which backend a value selects, whether a URL is usable, and the URL with its
passwords masked (for `config show`, logs and error messages).
"""

from __future__ import annotations

import re

from comfyfleet.shared.settings import MASK, ConfigError

SCHEMES = ("postgresql://", "postgres://")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_SECRET = re.compile(r"(?i)((?:^|&)(?:ssl)?password=)[^&#]*")
_KEYWORD_SECRET = re.compile(r"(?i)(\b(?:ssl)?password\s*=\s*)('(?:\\.|[^'\\])*'|\S+)")
_HOW = "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (unset: SQLite in the data dir)"


def is_postgres(url: str | None) -> bool:
    return url is not None and url.lower().startswith(SCHEMES)


def mask_url(url: str) -> str:
    """`url` with the password of its user info and any password= / sslpassword= masked (any
    scheme://, so that a wrong URL is masked in the error that refuses it)."""
    match = _URL_SCHEME.match(url)
    if match is None:  # keyword=value form, or something else: mask what looks like a password
        return _KEYWORD_SECRET.sub(lambda m: m.group(1) + MASK, url)
    scheme = match.group(0)
    rest = url[len(scheme) :]
    query_at = rest.find("?")
    head, query = (rest, "") if query_at < 0 else (rest[:query_at], rest[query_at:])
    at = head.rfind("@")
    if at >= 0:
        user, colon, _ = head[:at].partition(":")
        head = f"{user}{':' + MASK if colon else ''}{head[at:]}"
    if query:
        query = "?" + _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, query[1:])
    return url[: len(scheme)] + head + query


def check_store_url(url: str) -> None:
    """ConfigError(key="store") unless `url` is a postgresql:// URL that libpq can parse."""
    shown = mask_url(url)
    if not is_postgres(url):
        raise ConfigError("store", f"{_HOW}, got {shown!r}")
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        problem = mask_url(str(exc).strip().splitlines()[0])
        raise ConfigError("store", f"{shown!r} is not a usable URL: {problem}") from None
    port = str(params.get("port", ""))
    if port and not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        raise ConfigError("store", f"{shown!r}: port must be 1..65535, got {port!r}")
    timeout = str(params.get("connect_timeout", "0")).strip()
    if not timeout.lstrip("-").isdigit():
        raise ConfigError("store", f"{shown!r}: connect_timeout must be whole seconds")

"""Where the client connects and with which key: explicit value, then environment, then default."""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_URL = "http://127.0.0.1:8787"
URL_ENV = "COMFYFLEET_COORDINATOR"
KEY_ENV = "COMFYFLEET_API_KEY"


def resolve_url(url: str | None = None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    value = url or env.get(URL_ENV) or DEFAULT_URL
    return value.rstrip("/")


def resolve_api_key(key: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return key or env.get(KEY_ENV) or None

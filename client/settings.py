"""Where the client connects and with which key.

Each comes from the first of: the explicit value (a flag), the environment
(`COMFYFLEET_COORDINATOR`, `COMFYFLEET_API_KEY`), the client config file, the default. The
config file is TOML with top-level `coordinator` and `api_key`, at `COMFYFLEET_CLIENT_CONFIG` or
`~/.config/comfyfleet/client.toml` (`$XDG_CONFIG_HOME` respected).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from comfyfleet.client.errors import ClientError

DEFAULT_URL = "http://127.0.0.1:8787"
URL_ENV = "COMFYFLEET_COORDINATOR"
KEY_ENV = "COMFYFLEET_API_KEY"
CONFIG_ENV = "COMFYFLEET_CLIENT_CONFIG"


def config_path(env: Mapping[str, str]) -> Path:
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "comfyfleet" / "client.toml"


def load_config(env: Mapping[str, str]) -> dict[str, Any]:
    path = config_path(env)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if env.get(CONFIG_ENV):
            raise ClientError(f"client config {path} (from {CONFIG_ENV}) does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read client config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientError(f"client config {path} is not valid TOML: {exc}") from None
    for key in ("coordinator", "api_key"):
        if key in data and not isinstance(data[key], str):
            raise ClientError(f"client config {path}: {key} must be a string")
    return data


def resolve_url(
    url: str | Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The coordinator URL, or several comma-separated (every coordinator of one store: the
    client moves to another when one fails)."""
    env = os.environ if env is None else env
    if url is not None and not isinstance(url, str):
        url = ",".join(url)
    value = url or env.get(URL_ENV) or load_config(env).get("coordinator") or DEFAULT_URL
    return ",".join(part.strip().rstrip("/") for part in str(value).split(",") if part.strip())


def resolve_api_key(key: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return key or env.get(KEY_ENV) or load_config(env).get("api_key") or None

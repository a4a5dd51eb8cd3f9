"""The daemons' settings from the command line: TOML file < COMFYFLEET_* env < flags.

The layering and type checks live in `comfyfleet.shared.settings`, driven by the config
dataclasses' fields; here are only the command-line spellings (flags and old env names).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfyfleet.shared.settings import ConfigError, Layer, env_layer, file_layer, resolve

ROLES = ("coordinator", "agent")
# Values the command line assumes when nothing else says (the dataclasses have no default here).
CLI_DEFAULTS: dict[str, dict[str, Any]] = {
    "coordinator": {"data_dir": Path("var/coordinator"), "port": 8787},
    "agent": {"data_dir": Path("var/agent")},
}
# Older environment names, still honoured: env name -> field.
ENV_ALIASES: dict[str, dict[str, str]] = {
    "coordinator": {
        "COMFYFLEET_HEARTBEAT_INTERVAL": "heartbeat_interval_s",
        "COMFYFLEET_RESTART_GRACE": "restart_grace_s",
        "COMFYFLEET_ASSIGN_TIMEOUT": "assign_timeout_s",
    },
    "agent": {
        "COMFYFLEET_COORDINATOR": "coordinator_url",
        "COMFYFLEET_COMFYUI": "comfyui_urls",
        "COMFYFLEET_DRAIN_GRACE": "drain_grace_s",
        "COMFYFLEET_STALL": "stall_s",
    },
}


def config_class(role: str) -> type:
    if role == "coordinator":
        from comfyfleet.coordinator.config import CoordinatorConfig

        return CoordinatorConfig
    from comfyfleet.agent.config import AgentConfig

    return AgentConfig


def parse_set(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), val


def add_config_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML settings file (env COMFYFLEET_CONFIG); env and flags override it",
    )
    cmd.add_argument(
        "--set",
        type=parse_set,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key (repeatable); see `comfyfleet config show`",
    )


def layered_values(
    role: str,
    args: argparse.Namespace,
    env: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Typed values by field name from every layer; raises ConfigError naming the key."""
    cls = config_class(role)
    layers = [Layer("defaults", CLI_DEFAULTS[role], text=False)]
    config_path = args.config or (
        Path(env["COMFYFLEET_CONFIG"]) if env.get("COMFYFLEET_CONFIG") else None
    )
    if config_path is not None:
        layers.append(file_layer(config_path))
    env_values = dict(env_layer(cls, env, ENV_ALIASES[role]).values)
    if role == "coordinator" and "COMFYFLEET_LISTEN" in env:
        host, port = split_listen("COMFYFLEET_LISTEN", env["COMFYFLEET_LISTEN"])
        env_values.setdefault("host", host)
        env_values.setdefault("port", str(port))
    layers.append(Layer("environment", env_values, text=True))
    layers.append(Layer("flags", dict(flags or {}), text=False))
    layers.append(Layer("--set", dict(args.set), text=True))
    values = resolve(cls, layers)
    check(role, values)
    return values


def split_listen(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def check(role: str, values: Mapping[str, Any]) -> None:
    """Rules beyond the types."""
    if "port" in values and not 0 <= values["port"] <= 65535:
        raise ConfigError("port", f"must be 0..65535, got {values['port']}")
    if values.get("comfy_listen"):
        _, comfy_port = split_listen("comfy_listen", values["comfy_listen"])
        if not 0 <= comfy_port <= 65535:
            raise ConfigError("comfy_listen", f"port must be 0..65535, got {comfy_port}")
    if role == "coordinator" and values.get("store") is not None:
        from comfyfleet.coordinator.store.dsn import check_store_url

        check_store_url(values["store"])
    if role == "agent":
        for key in ("coordinator_url", "comfyui_urls"):
            urls = values.get(key)
            if isinstance(urls, str):  # coordinator_url: one URL, or several comma-separated
                urls = urls.split(",") if key == "coordinator_url" else [urls]
            for url in urls or ():
                if not url.strip().startswith(("http://", "https://")):
                    raise ConfigError(key, f"{url!r} is not an http(s) URL")
    if role == "coordinator":
        url = values.get("advertise_url")
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError("advertise_url", f"{url!r} is not an http(s) URL")
        lease, renew = values.get("leader_lease_s", 3.0), values.get("leader_renew_s", 1.0)
        if not 0 < renew < lease:
            raise ConfigError(
                "leader_renew_s", f"must be above 0 and below leader_lease_s ({lease:g})"
            )
    mode = values.get("comfyui_mode")
    if mode is not None and mode not in ("external", "process", "docker"):
        raise ConfigError("comfyui_mode", "must be external, process or docker")
    if mode == "process" and not values.get("comfyui_command") and not values.get("instances"):
        raise ConfigError("comfyui_command", "is required in process mode")
    if mode == "docker" and not values.get("docker_image") and not values.get("instances"):
        raise ConfigError("docker_image", "is required in docker mode")
    if values.get("docker_gpus", "auto") not in ("auto", "none"):
        raise ConfigError("docker_gpus", "must be auto or none")
    if "gpu_source" in values and values["gpu_source"] not in ("auto", "nvml", "comfyui"):
        raise ConfigError("gpu_source", "must be auto, nvml or comfyui")
    level = values.get("log_level")
    if level is not None and level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level", "must be debug, info, warning or error")


def process_env() -> dict[str, str]:
    return dict(os.environ)

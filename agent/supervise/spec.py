"""Which ComfyUI instances an agent drives, and how each one runs: pure planning from the config.

`plan(config, gpu_count)` turns the agent config into one `InstanceSpec` per instance:

* `[[instances]]` tables, when given, one each (unset keys take the agent-wide values);
* otherwise `external`: one per `comfyui_urls` entry; `process` / `docker`: `comfyui_count`
  instances, or one per GPU NVML sees, or one when it sees none. Instance i listens on
  `comfyui_port + i` and drives GPU i.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, TypeVar

from comfyfleet.agent.config import AgentConfig, InstanceConfig
from comfyfleet.agent.coordinator_client import AgentError

Kind = Literal["external", "process", "docker"]
KINDS: tuple[Kind, ...] = ("external", "process", "docker")
_N = TypeVar("_N", int, float)


class InstanceConfigError(AgentError):
    """The config cannot describe a runnable instance; `key` names the setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Mount:
    source: str  # host path
    target: str  # path inside the container
    read_only: bool


@dataclass(frozen=True, slots=True)
class DockerSpec:
    image: str
    mem_limit_mb: int  # 0: none
    cpus: float  # 0: none
    shm_size_mb: int
    mounts: tuple[Mount, ...]
    gpu_request: bool  # pass the instance's GPU with a device request


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    instance_id: str
    kind: Kind
    url: str
    host: str = "127.0.0.1"
    port: int = 0
    gpu: int | None = None
    command: tuple[str, ...] = ()  # process: argv; docker: the container's command ((): image's)
    docker: DockerSpec | None = None

    @property
    def managed(self) -> bool:
        return self.kind != "external"

    def fingerprint(self) -> str:
        """Changes whenever what runs changes: an adopted instance must still match it."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_command(template: str, *, port: int, gpu: int | None, host: str) -> tuple[str, ...]:
    """Split like a shell and fill `{port}`, `{gpu}` (empty without a GPU) and `{host}`."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise InstanceConfigError("comfyui_command", f"cannot split {template!r}: {exc}") from None
    if not words:
        raise InstanceConfigError("comfyui_command", "is empty")
    values = {"port": str(port), "gpu": "" if gpu is None else str(gpu), "host": host}
    out = []
    for word in words:
        try:
            out.append(word.format_map(values))
        except (KeyError, IndexError, ValueError) as exc:
            raise InstanceConfigError(
                "comfyui_command",
                f"{word!r}: unknown placeholder {exc} (known: {{port}} {{gpu}} {{host}}; "
                "write {{ and }} for literal braces)",
            ) from None
    return tuple(out)


def plan(config: AgentConfig, gpu_count: int) -> tuple[InstanceSpec, ...]:
    """Every instance the agent drives, in order (instance ids "0", "1", ...)."""
    if config.instances:
        tables = list(config.instances)
    elif config.comfyui_mode == "external":
        tables = [InstanceConfig(kind="external", url=u) for u in config.comfyui_urls]
    else:
        count = config.comfyui_count or max(gpu_count, 1)
        tables = [InstanceConfig() for _ in range(count)]
    if not tables:
        raise InstanceConfigError("comfyui_urls", "no ComfyUI instance configured")
    specs = tuple(_spec(config, str(i), i, t, gpu_count) for i, t in enumerate(tables))
    ports = [(s.host, s.port) for s in specs if s.managed]
    if len(set(ports)) != len(ports):
        raise InstanceConfigError("instances", f"two managed instances share a port: {ports}")
    return specs


def _spec(
    config: AgentConfig, iid: str, index: int, t: InstanceConfig, gpu_count: int
) -> InstanceSpec:
    kind = t.kind or config.comfyui_mode
    if kind not in KINDS:
        raise InstanceConfigError(_key(t, "kind", "comfyui_mode"), f"unknown kind {kind!r}")
    if kind == "external":
        url = t.url or ""
        if not url.startswith(("http://", "https://")):
            raise InstanceConfigError(_key(t, "url", "comfyui_urls"), f"{url!r} is not a URL")
        return InstanceSpec(iid, "external", url.rstrip("/"))
    host = t.host or config.comfyui_host
    port = t.port if t.port is not None else config.comfyui_port + index
    if not 0 < port < 65536:
        raise InstanceConfigError(_key(t, "port", "comfyui_port"), f"port {port} out of range")
    gpu = t.gpu if t.gpu is not None else (index if gpu_count > 0 else None)
    template = t.command or config.comfyui_command
    url = f"http://{_url_host(host)}:{port}"
    if kind == "process":
        if not template:
            raise InstanceConfigError(
                _key(t, "command", "comfyui_command"), "process mode needs a command"
            )
        argv = render_command(template, port=port, gpu=gpu, host=host)
        return InstanceSpec(iid, "process", url, host, port, gpu, argv)
    image = t.image or config.docker_image
    if not image:
        raise InstanceConfigError(_key(t, "image", "docker_image"), "docker mode needs an image")
    argv = render_command(template, port=port, gpu=gpu, host=host) if template else ()
    return InstanceSpec(
        iid,
        "docker",
        url,
        host,
        port,
        gpu,
        argv,
        DockerSpec(
            image=image,
            mem_limit_mb=_or(t.mem_limit_mb, config.docker_mem_limit_mb),
            cpus=_or(t.cpus, config.docker_cpus),
            shm_size_mb=_or(t.shm_size_mb, config.docker_shm_size_mb),
            mounts=_mounts(config, t),
            gpu_request=gpu is not None and config.docker_gpus != "none",
        ),
    )


def _mounts(config: AgentConfig, t: InstanceConfig) -> tuple[Mount, ...]:
    root = config.docker_comfyui_root.rstrip("/")
    wanted = (
        (t.models_dir or config.docker_models_dir, "models", True),
        (t.custom_nodes_dir or config.docker_custom_nodes_dir, "custom_nodes", True),
        (t.input_dir or config.docker_input_dir, "input", False),
        (t.output_dir or config.docker_output_dir, "output", False),
    )
    return tuple(
        Mount(str(Path(src).resolve()), f"{root}/{name}", ro)
        for src, name, ro in wanted
        if src is not None
    )


def _or(own: _N | None, default: _N) -> _N:
    return default if own is None else own


def _key(t: InstanceConfig, own: str, default: str) -> str:
    return f"instances.{own}" if getattr(t, own) is not None else default


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host

"""Agent configuration: one frozen dataclass, passed in explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.agent.comfy_files import ComfyFolders
from comfyfleet.shared.settings import ConfigError


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    """One `[[instances]]` table: a ComfyUI this agent drives. Keys left out take the agent-wide
    `comfyui_*` / `docker_*` values; `gpu` left out is the instance's position when NVML sees
    GPUs, none otherwise."""

    kind: str | None = None  # external | process | docker (default: comfyui_mode)
    url: str | None = None  # external: where it listens
    command: str | None = None  # process / docker: the command, {port} {gpu} {host} filled in
    host: str | None = None
    port: int | None = None
    gpu: int | None = None
    image: str | None = None
    mem_limit_mb: int | None = None
    cpus: float | None = None
    shm_size_mb: int | None = None
    models_dir: Path | None = None
    custom_nodes_dir: Path | None = None
    input_dir: Path | None = None
    output_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class AgentConfig:
    coordinator_url: str  # one URL, or several comma-separated (every coordinator of a store)
    agent_id: str
    data_dir: Path
    comfyui_urls: tuple[str, ...] = ()  # external instances (comfyui_mode = "external")
    gpu_source: str = "auto"  # auto | nvml | comfyui
    labels: dict[str, str] = field(default_factory=dict)
    drain_grace_s: float = 30.0  # on SIGTERM, running jobs get this long to finish
    stall_s: float = 10.0  # no ComfyUI event for this long: ask /history
    health_interval_s: float = 2.0
    max_output_bytes: int = 2 << 30
    events_flush_s: float = 0.1  # batch progress events for this long
    # a finished attempt's report is kept in the outbox (synced to disk) only when the coordinator
    # has not acknowledged it within this long; until then the state file holds the prompt
    report_keep_s: float = 0.5
    request_timeout_s: float = 60.0
    cancel_wait_s: float = 30.0  # after /interrupt, give up on a ComfyUI that never stops
    comfyui_timeout_s: float = 30.0  # one HTTP call to ComfyUI (a hung /prompt) gives up after
    vram_sample_s: float = 0.25  # sample ComfyUI's VRAM this often while a job runs
    inventory_refresh_s: float = 60.0  # re-read models and node classes this often
    log_level: str = "info"
    agent_token: str | None = field(default=None, repr=False)  # sent as Authorization: Bearer
    ca_file: Path | None = None  # CA bundle to verify an https coordinator (default: system)
    # Prompts each ComfyUI holds at once: 2 keeps the next one queued inside ComfyUI while the
    # current one runs (no round trip between jobs on the GPU); the coordinator reserves VRAM
    # for both. 1 turns the pipeline off.
    capacity: int = 2
    # --- managed ComfyUIs (DESIGN.md §5 "Running and healing ComfyUI") ---------------------
    # external: someone else runs ComfyUI at comfyui_urls; process: the agent starts
    # comfyui_command once per GPU (or comfyui_count times); docker: one container per GPU.
    comfyui_mode: str = "external"
    comfyui_command: str | None = None  # placeholders {port} {gpu} {host}
    comfyui_host: str = "127.0.0.1"
    comfyui_port: int = 8188  # instance i listens on comfyui_port + i
    comfyui_count: int = 0  # managed instances; 0: one per GPU NVML sees (one if none)
    comfyui_log_max_bytes: int = 10 << 20  # a process's log file is rotated at this size
    comfyui_log_backups: int = 3
    comfyui_stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this long
    docker_url: str | None = None  # default: DOCKER_HOST, else the local socket
    docker_image: str | None = None
    docker_mem_limit_mb: int = 0  # 0: no limit
    docker_cpus: float = 0.0  # 0: no limit
    docker_shm_size_mb: int = 1024
    docker_comfyui_root: str = "/opt/ComfyUI"  # where ComfyUI lives inside the image
    docker_models_dir: Path | None = None  # mounted read-only at <root>/models
    docker_custom_nodes_dir: Path | None = None  # mounted read-only at <root>/custom_nodes
    docker_input_dir: Path | None = None  # mounted at <root>/input
    docker_output_dir: Path | None = None  # mounted at <root>/output
    docker_gpus: str = "auto"  # auto: pass each instance its GPU when NVML sees GPUs; none
    # healing, one policy for process and docker instances
    heal_http_silent_s: float = 30.0  # HTTP unanswered this long: hung
    heal_stall_s: float = 600.0  # a running prompt with no event this long: hung
    heal_ws_silent: bool = True  # restart when the WebSocket stays silent while prompts finish
    heal_leak_vram_mb: int = 0  # idle VRAM held after POST /free above this: restart (0: off)
    heal_leak_ram_mb: int = 0  # idle RAM of the instance after POST /free above this (0: off)
    restart_every_n_jobs: int = 0  # 0: never
    start_timeout_s: float = 300.0  # a (re)start must answer HTTP (and warm up) within this
    backoff_base_s: float = 1.0  # failed starts wait base * 2^(n-1), at most backoff_max_s
    backoff_max_s: float = 60.0
    unhealthy_after_starts: int = 3  # failed starts in a row before the instance is unhealthy
    warmup_workflow: Path | None = None  # API-format workflow run after each (re)start
    instances: tuple[InstanceConfig, ...] = ()  # [[instances]] tables; overrides the above
    # The GPU (NVML index) of each ComfyUI, in the order of comfyui_urls; empty: each instance's
    # `--cuda-device N` as its /system_stats argv shows, else its position in the list.
    comfyui_gpus: tuple[int, ...] = ()
    # ComfyUI's own output and input folders, one per URL in the same order (as this host sees
    # them): the agent removes from them what its jobs created once the coordinator has the
    # results (agent/comfy_files.py). Empty: nothing is removed.
    comfyui_output_dirs: tuple[Path, ...] = ()
    comfyui_input_dirs: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        for key, what in (
            ("comfyui_gpus", "GPU indexes"),
            ("comfyui_output_dirs", "output folders"),
            ("comfyui_input_dirs", "input folders"),
        ):
            given = getattr(self, key)
            if given and len(given) != len(self.comfyui_urls):
                raise ConfigError(
                    key,
                    f"gives {len(given)} {what} for {len(self.comfyui_urls)} "
                    "ComfyUI URLs: one per URL, in the same order",
                )

    def gpu_of(self, ordinal: int) -> int | None:
        """The GPU configured for the ComfyUI at position `ordinal` (None: find out)."""
        return self.comfyui_gpus[ordinal] if self.comfyui_gpus else None

    def folders_of(self, ordinal: int) -> ComfyFolders:
        """The output and input folders of the ComfyUI at position `ordinal` (None: unknown):
        `comfyui_output_dirs`/`comfyui_input_dirs` (external instances), else the instance's
        `[[instances]]` table, else, for a container, the host folders mounted into it."""
        table = self.instances[ordinal] if ordinal < len(self.instances) else InstanceConfig()
        docker = (table.kind or self.comfyui_mode) == "docker"
        output = self.comfyui_output_dirs[ordinal] if self.comfyui_output_dirs else None
        input_ = self.comfyui_input_dirs[ordinal] if self.comfyui_input_dirs else None
        return ComfyFolders(
            output=output or table.output_dir or (self.docker_output_dir if docker else None),
            input=input_ or table.input_dir or (self.docker_input_dir if docker else None),
        )

    @property
    def state_file(self) -> Path:
        return self.data_dir / "agent-state.json"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    def comfy_ledger_dir(self, instance_id: str) -> Path:
        return self.data_dir / "comfy-files" / instance_id

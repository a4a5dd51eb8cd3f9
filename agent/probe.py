"""Resource probe of the agent: host CPU/RAM (psutil) and per-GPU VRAM (NVML, or ComfyUI).

DESIGN.md §3: per heartbeat the agent reports CPU count and load, RAM total/available and, per GPU,
index, name, UUID and VRAM total/used/free. GPUs come from NVML (`pynvml`); where NVML finds no GPU
(no library, no driver, no device — the simulator's case), from the CUDA devices that ComfyUI lists
in `GET /system_stats`. A ComfyUI with only a CPU device contributes no GPU.

All sizes are in MB meaning MiB (2**20 bytes), the unit nvidia-smi prints.

Blocking: psutil and NVML calls block the calling thread. Each is cheap (microseconds to about a
millisecond per GPU), but the agent still calls `ResourceProbe.host()` and `ResourceProbe.gpus()`
through `asyncio.to_thread` so a slow driver never stalls the event loop. Nothing here raises for
the lack of a GPU; a GPU whose memory cannot be read is left out and logged.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import psutil
import structlog

GpuSource = Literal["nvml", "comfyui"]
GpuSourceRequest = Literal["auto", "nvml", "comfyui"]

_MIB = 1024 * 1024
# ComfyUI names a CUDA device "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync".
_COMFY_NAME = re.compile(r"^\s*cuda(?::\d+)?\s+(?P<name>.*?)(?:\s+:\s+\S+)?\s*$")


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """CPU and RAM of the agent's host at one moment."""

    hostname: str
    cpu_count: int
    load_1m: float
    cpu_percent: float
    ram_total_mb: int
    ram_available_mb: int


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """One GPU at one moment. `utilization_pct` is None where the source cannot tell."""

    index: int
    name: str
    uuid: str
    vram_total_mb: int
    vram_used_mb: int
    vram_free_mb: int
    utilization_pct: float | None
    source: GpuSource


def _mib(value: int) -> int:
    return max(0, int(value) // _MIB)


def host_snapshot() -> HostSnapshot:
    """Read the host's CPU and RAM now (non-blocking `cpu_percent`: since the previous call).

    The first `cpu_percent` reading of a process is 0.0; `ResourceProbe` primes it at construction.
    """
    mem = psutil.virtual_memory()
    try:
        load_1m = float(psutil.getloadavg()[0])
    except (OSError, AttributeError):
        load_1m = 0.0
    return HostSnapshot(
        hostname=socket.gethostname(),
        cpu_count=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        load_1m=load_1m,
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        ram_total_mb=_mib(mem.total),
        ram_available_mb=_mib(mem.available),
    )


# --- NVML -------------------------------------------------------------------------------------


def _text(value: object) -> str:
    """pynvml answers bytes in old releases and str in new ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class NvmlProbe:
    """Reads GPUs through NVML. Open with `try_open()`; every method call blocks briefly."""

    def __init__(self, nvml: ModuleType, *, logger: Any | None = None) -> None:
        """Wrap an already initialised pynvml module (`try_open` does the init)."""
        self._nvml = nvml
        self._open = True
        self._log = logger if logger is not None else structlog.get_logger(__name__)

    @classmethod
    def try_open(
        cls, nvml: ModuleType | None = None, *, logger: Any | None = None
    ) -> tuple[NvmlProbe | None, str]:
        """Initialise NVML once. Never raises: `(None, reason)` when no GPU can be read."""
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except Exception as exc:  # ImportError, or a broken install
                return None, f"NVML unavailable: pynvml cannot be imported ({exc})"
        try:
            nvml.nvmlInit()
        except Exception as exc:
            return None, f"NVML unavailable: {_text(exc) or type(exc).__name__}"
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            _shutdown(nvml)
            return None, f"NVML cannot count GPUs: {_text(exc) or type(exc).__name__}"
        if count <= 0:
            _shutdown(nvml)
            return None, "NVML found no GPU"
        return cls(nvml, logger=logger), f"NVML found {count} GPU(s)"

    def gpus(self) -> list[GpuSnapshot]:
        """Snapshot every GPU; one that fails is logged and left out, the others still count."""
        if not self._open:
            return []
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            self._log.warning("nvml_count_failed", error=_text(exc))
            return []
        out: list[GpuSnapshot] = []
        for index in range(count):
            snap = self._one(index)
            if snap is not None:
                out.append(snap)
        return out

    def _one(self, index: int) -> GpuSnapshot | None:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            total, used, free = _mib(mem.total), _mib(mem.used), _mib(mem.free)
        except Exception as exc:
            self._log.warning("nvml_gpu_unreadable", index=index, error=_text(exc))
            return None
        name = self._optional(lambda: _text(nvml.nvmlDeviceGetName(handle)), f"GPU {index}")
        uuid = self._optional(lambda: _text(nvml.nvmlDeviceGetUUID(handle)), f"nvml-index-{index}")
        util: float | None = self._optional(
            lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu), None
        )
        return GpuSnapshot(
            index=index,
            name=name,
            uuid=uuid,
            vram_total_mb=total,
            vram_used_mb=used,
            vram_free_mb=free,
            utilization_pct=util,
            source="nvml",
        )

    @staticmethod
    def _optional(call: Callable[[], Any], default: Any) -> Any:
        try:
            return call()
        except Exception:
            return default

    def close(self) -> None:
        """Shut NVML down; idempotent, never raises."""
        if self._open:
            self._open = False
            _shutdown(self._nvml)


def _shutdown(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


# --- ComfyUI /system_stats --------------------------------------------------------------------


def _as_int(value: object) -> int | None:
    # bool is an int subclass; a JSON true is not a size or an index.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return int(value)
    return None


def _clean_name(raw: object, index: int) -> str:
    if not isinstance(raw, str) or not raw.strip():
        return f"cuda:{index}"
    match = _COMFY_NAME.match(raw)
    name = match.group("name") if match else raw.strip()
    return name or raw.strip()


def gpus_from_system_stats(stats: Mapping[str, Any], instance_index: int) -> list[GpuSnapshot]:
    """Map one ComfyUI `/system_stats` answer to GPU snapshots; pure and never raises.

    Only devices of type `cuda` count (a `cpu` device is no GPU). Bytes become MiB; the snapshot's
    `index` is the device's own CUDA index (falling back to `instance_index` when ComfyUI gives
    none). ComfyUI reports no UUID, so one is made up as `comfyui-<instance_index>-cuda<index>`:
    stable while the agent's instance list is. Entries without a usable `vram_total` are skipped;
    a missing `vram_free` counts as nothing free.
    """
    if not isinstance(stats, Mapping):
        return []
    devices = stats.get("devices")
    if not isinstance(devices, list):
        return []
    out: list[GpuSnapshot] = []
    for dev in devices:
        if not isinstance(dev, Mapping) or dev.get("type") != "cuda":
            continue
        total = _as_int(dev.get("vram_total"))
        if total is None or total <= 0:
            continue
        free = _as_int(dev.get("vram_free"))
        free = 0 if free is None else min(max(free, 0), total)
        index = _as_int(dev.get("index"))
        if index is None or index < 0:
            index = instance_index
        total_mb, free_mb = _mib(total), _mib(free)
        out.append(
            GpuSnapshot(
                index=index,
                name=_clean_name(dev.get("name"), index),
                uuid=f"comfyui-{instance_index}-cuda{index}",
                vram_total_mb=total_mb,
                vram_used_mb=total_mb - free_mb,
                vram_free_mb=free_mb,
                utilization_pct=None,
                source="comfyui",
            )
        )
    return out


def cuda_device_arg(argv: object) -> int | None:
    """N of `--cuda-device N` (or `--cuda-device=N`) in the argv ComfyUI reports; pure."""
    if not isinstance(argv, list):
        return None
    for i, arg in enumerate(argv):
        value: object
        if arg == "--cuda-device":
            value = argv[i + 1] if i + 1 < len(argv) else None
        elif isinstance(arg, str) and arg.startswith("--cuda-device="):
            value = arg.partition("=")[2]
        else:
            continue
        return int(value) if isinstance(value, str) and value.isdigit() else None
    return None


def instance_gpu(
    stats: Mapping[str, Any], ordinal: int, configured: int | None, nvml: bool
) -> int | None:
    """The host GPU (NVML index) one ComfyUI instance runs on; None for a CPU-only one; pure.

    A ComfyUI started with `--cuda-device N` hides every other GPU from itself, so the device it
    lists in /system_stats is `cuda:0` whatever N is: its index says nothing about the host. In
    order: the index configured for the instance; N from the argv in /system_stats; the
    instance's position among the agent's ComfyUI URLs (one ComfyUI per GPU, in order). Where
    CUDA numbers GPUs other than NVML does (CUDA_DEVICE_ORDER), configure the index.
    """
    devices = stats.get("devices") if isinstance(stats, Mapping) else None
    has_gpu = isinstance(devices, list) and any(
        isinstance(d, Mapping) and d.get("type") == "cuda" for d in devices
    )
    if not (has_gpu or nvml):
        return None
    if configured is not None:
        return configured
    system = stats.get("system") if isinstance(stats, Mapping) else None
    arg = cuda_device_arg(system.get("argv") if isinstance(system, Mapping) else None)
    return arg if arg is not None else ordinal


# --- choice and combination -------------------------------------------------------------------


def choose_gpu_source(requested: GpuSourceRequest, nvml_ok: bool) -> GpuSource:
    """Which source to read GPUs from. `nvml` requested but unusable falls back to `comfyui`."""
    if requested not in ("auto", "nvml", "comfyui"):
        raise ValueError(f"unknown GPU source {requested!r}: expected auto, nvml or comfyui")
    if requested == "comfyui":
        return "comfyui"
    return "nvml" if nvml_ok else "comfyui"


class ResourceProbe:
    """What the agent reads each heartbeat: `host()` and `gpus(...)` (call via asyncio.to_thread).

    NVML is opened once at construction unless `comfyui` is requested; why it is not used is
    logged once. `close()` releases NVML.
    """

    def __init__(
        self,
        requested: GpuSourceRequest = "auto",
        *,
        nvml_opener: Callable[[], tuple[NvmlProbe | None, str]] | None = None,
        logger: Any | None = None,
    ) -> None:
        self._log = logger if logger is not None else structlog.get_logger(__name__)
        self._nvml: NvmlProbe | None = None
        reason = "comfyui requested"
        if requested != "comfyui":
            opener = nvml_opener or (lambda: NvmlProbe.try_open(logger=self._log))
            self._nvml, reason = opener()
        self.source: GpuSource = choose_gpu_source(requested, self._nvml is not None)
        self.reason = reason
        if self.source == "nvml":
            self._log.info("gpu_source", source="nvml", reason=reason)
        elif requested == "nvml":
            self._log.warning("gpu_source_fallback", source="comfyui", reason=reason)
        else:
            self._log.info("gpu_source", source="comfyui", reason=reason)
        self._warned_empty = False
        psutil.cpu_percent(interval=None)  # prime: the next reading covers the time since now

    def host(self) -> HostSnapshot:
        return host_snapshot()

    def gpus(self, system_stats_by_instance: Mapping[str, Mapping[str, Any]]) -> list[GpuSnapshot]:
        """GPUs now: NVML's, else the CUDA devices each ComfyUI instance reports.

        Instances are numbered in sorted order of their ids (this numbering goes into the made-up
        UUIDs). If NVML answers with no GPU at all this heartbeat, ComfyUI's view is used instead.
        """
        if self._nvml is not None:
            found = self._nvml.gpus()
            if found:
                self._warned_empty = False
                return found
            if not self._warned_empty:
                self._warned_empty = True
                self._log.warning("nvml_no_gpu_this_time", fallback="comfyui")
        return list(_from_instances(system_stats_by_instance))

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None


def _from_instances(
    system_stats_by_instance: Mapping[str, Mapping[str, Any]],
) -> Iterable[GpuSnapshot]:
    for instance_index, key in enumerate(sorted(system_stats_by_instance)):
        yield from gpus_from_system_stats(system_stats_by_instance[key], instance_index)

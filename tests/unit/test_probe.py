"""Resource probe: host snapshot, NVML (real and faked), ComfyUI /system_stats mapping."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from comfyfleet.agent.probe import (
    GpuSnapshot,
    HostSnapshot,
    NvmlProbe,
    ResourceProbe,
    choose_gpu_source,
    gpus_from_system_stats,
    host_snapshot,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MIB = 1024 * 1024
GIB = 1024 * MIB


# --- host -------------------------------------------------------------------------------------


def test_host_snapshot_is_sane_here() -> None:
    snap = host_snapshot()
    assert isinstance(snap, HostSnapshot)
    assert snap.hostname
    assert snap.cpu_count >= 1
    assert snap.load_1m >= 0.0
    assert 0.0 <= snap.cpu_percent <= 100.0
    assert snap.ram_total_mb > 0
    assert 0 <= snap.ram_available_mb <= snap.ram_total_mb


# --- real NVML on this machine ------------------------------------------------------------------


def test_real_nvml_try_open_never_raises() -> None:
    probe, reason = NvmlProbe.try_open()
    assert reason
    if probe is None:  # the normal case on the CI machine: no library or no driver
        assert reason.startswith("NVML")
    else:  # a GPU machine
        try:
            assert probe.gpus()
        finally:
            probe.close()


def test_resource_probe_without_gpu_does_not_crash() -> None:
    rp = ResourceProbe("auto", nvml_opener=lambda: (None, "NVML unavailable: test"))
    assert rp.source == "comfyui"
    assert isinstance(rp.host(), HostSnapshot)
    assert rp.gpus({}) == []
    rp.close()


# --- fake pynvml ----------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


def make_fake_nvml(
    devices: list[dict[str, Any]], *, init_error: str | None = None, name_bytes: bool = False
) -> types.ModuleType:
    """A stand-in for pynvml with `devices`; a device with `mem_error` fails its memory call."""
    mod = types.ModuleType("pynvml")
    calls: dict[str, int] = {"init": 0, "shutdown": 0}

    def nvmlInit() -> None:
        calls["init"] += 1
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def nvmlShutdown() -> None:
        calls["shutdown"] += 1

    def nvmlDeviceGetCount() -> int:
        return len(devices)

    def nvmlDeviceGetHandleByIndex(i: int) -> dict[str, Any]:
        return devices[i]

    def nvmlDeviceGetName(h: dict[str, Any]) -> str | bytes:
        return h["name"].encode() if name_bytes else h["name"]

    def nvmlDeviceGetUUID(h: dict[str, Any]) -> str | bytes:
        if "uuid" not in h:
            raise FakeNVMLError("Not Supported")
        return h["uuid"].encode() if name_bytes else h["uuid"]

    def nvmlDeviceGetMemoryInfo(h: dict[str, Any]) -> types.SimpleNamespace:
        if h.get("mem_error"):
            raise FakeNVMLError("GPU is lost")
        return types.SimpleNamespace(total=h["total"], used=h["used"], free=h["total"] - h["used"])

    def nvmlDeviceGetUtilizationRates(h: dict[str, Any]) -> types.SimpleNamespace:
        if "util" not in h:
            raise FakeNVMLError("Not Supported")
        return types.SimpleNamespace(gpu=h["util"], memory=0)

    for fn in (
        nvmlInit,
        nvmlShutdown,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetName,
        nvmlDeviceGetUUID,
        nvmlDeviceGetMemoryInfo,
        nvmlDeviceGetUtilizationRates,
    ):
        setattr(mod, fn.__name__, fn)
    mod.calls = calls  # type: ignore[attr-defined]
    return mod


TWO_GPUS = [
    {"name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-aaaa", "total": 80 * GIB, "used": 2 * GIB,
     "util": 37},
    {"name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-bbbb", "total": 80 * GIB, "used": 0,
     "mem_error": True},
]  # fmt: skip


def test_fake_nvml_one_failing_gpu_does_not_break_the_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = make_fake_nvml(TWO_GPUS)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    probe, reason = NvmlProbe.try_open()
    assert probe is not None, reason
    assert "2 GPU" in reason
    with capture_logs() as logs:
        gpus = probe.gpus()
    assert gpus == [
        GpuSnapshot(
            index=0,
            name="NVIDIA A100-SXM4-80GB",
            uuid="GPU-aaaa",
            vram_total_mb=80 * 1024,
            vram_used_mb=2 * 1024,
            vram_free_mb=78 * 1024,
            utilization_pct=37.0,
            source="nvml",
        )
    ]
    assert [e["event"] for e in logs] == ["nvml_gpu_unreadable"]
    assert logs[0]["index"] == 1
    probe.close()
    probe.close()
    assert fake.calls == {"init": 1, "shutdown": 1}  # type: ignore[attr-defined]
    assert probe.gpus() == []


def test_fake_nvml_bytes_names_and_missing_optional_calls() -> None:
    fake = make_fake_nvml([{"name": "Tesla T4", "total": 16 * GIB, "used": GIB}], name_bytes=True)
    probe, _ = NvmlProbe.try_open(fake)
    assert probe is not None
    (gpu,) = probe.gpus()
    assert gpu.name == "Tesla T4"
    assert gpu.uuid == "nvml-index-0"  # UUID call failed: placeholder, not a crash
    assert gpu.utilization_pct is None
    assert (gpu.vram_total_mb, gpu.vram_used_mb, gpu.vram_free_mb) == (16384, 1024, 15360)


def test_fake_nvml_init_failure_gives_reason() -> None:
    fake = make_fake_nvml(TWO_GPUS, init_error="NVML Shared Library Not Found")
    probe, reason = NvmlProbe.try_open(fake)
    assert probe is None
    assert reason == "NVML unavailable: NVML Shared Library Not Found"


def test_fake_nvml_zero_devices_gives_reason_and_shuts_down() -> None:
    fake = make_fake_nvml([])
    probe, reason = NvmlProbe.try_open(fake)
    assert probe is None
    assert "no GPU" in reason
    assert fake.calls["shutdown"] == 1  # type: ignore[attr-defined]


def test_missing_pynvml_gives_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    probe, reason = NvmlProbe.try_open()
    assert probe is None
    assert reason.startswith("NVML unavailable: pynvml cannot be imported")


def test_resource_probe_prefers_nvml_and_logs_choice_once() -> None:
    fake = make_fake_nvml(TWO_GPUS[:1])
    with capture_logs() as logs:
        rp = ResourceProbe("auto", nvml_opener=lambda: NvmlProbe.try_open(fake))
        first = rp.gpus({"a": _cuda_stats()})
        second = rp.gpus({"a": _cuda_stats()})
    assert rp.source == "nvml"
    assert [g.source for g in first] == ["nvml"]
    assert first == second
    assert [e["event"] for e in logs] == ["gpu_source"]
    rp.close()
    assert fake.calls["shutdown"] == 1  # type: ignore[attr-defined]


def test_resource_probe_nvml_requested_but_missing_falls_back_with_warning() -> None:
    with capture_logs() as logs:
        rp = ResourceProbe("nvml", nvml_opener=lambda: (None, "NVML unavailable: x"))
        gpus = rp.gpus({"b": _cuda_stats(index=1), "a": _cuda_stats(index=0)})
        rp.gpus({})
    assert rp.source == "comfyui"
    assert [(g.index, g.uuid) for g in gpus] == [(0, "comfyui-0-cuda0"), (1, "comfyui-1-cuda1")]
    assert [(e["event"], e["log_level"]) for e in logs] == [("gpu_source_fallback", "warning")]
    assert logs[0]["reason"] == "NVML unavailable: x"


def test_resource_probe_comfyui_requested_never_opens_nvml() -> None:
    def opener() -> tuple[NvmlProbe | None, str]:
        raise AssertionError("must not open NVML")

    rp = ResourceProbe("comfyui", nvml_opener=opener)
    assert rp.source == "comfyui"


# --- choose_gpu_source ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "nvml_ok", "expected"),
    [
        ("auto", True, "nvml"),
        ("auto", False, "comfyui"),
        ("nvml", True, "nvml"),
        ("nvml", False, "comfyui"),
        ("comfyui", True, "comfyui"),
        ("comfyui", False, "comfyui"),
    ],
)
def test_choose_gpu_source(requested: Any, nvml_ok: bool, expected: str) -> None:
    assert choose_gpu_source(requested, nvml_ok) == expected


def test_choose_gpu_source_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        choose_gpu_source("cuda", True)  # type: ignore[arg-type]


# --- /system_stats ------------------------------------------------------------------------------


def _cuda_stats(index: int = 0) -> dict[str, Any]:
    return {
        "system": {"os": "posix", "ram_total": 64 * GIB, "ram_free": 60 * GIB},
        "devices": [
            {
                "name": f"cuda:{index} NVIDIA GeForce RTX 4090 : cudaMallocAsync",
                "type": "cuda",
                "index": index,
                "vram_total": 24 * GIB,
                "vram_free": 20 * GIB + 512 * MIB,
                "torch_vram_total": 0,
                "torch_vram_free": 0,
            }
        ],
    }


def test_recorded_cpu_answer_has_no_gpu() -> None:
    stats = json.loads((FIXTURES / "system_stats_cpu.json").read_text())
    assert stats["devices"][0]["type"] == "cpu"
    assert gpus_from_system_stats(stats, 0) == []


def test_synthetic_cuda_answer() -> None:
    (gpu,) = gpus_from_system_stats(_cuda_stats(index=3), instance_index=1)
    assert gpu == GpuSnapshot(
        index=3,
        name="NVIDIA GeForce RTX 4090",
        uuid="comfyui-1-cuda3",
        vram_total_mb=24576,
        vram_used_mb=3584,
        vram_free_mb=20992,
        utilization_pct=None,
        source="comfyui",
    )


def test_odd_entries_are_skipped_or_defaulted() -> None:
    good = _cuda_stats()["devices"][0]
    stats = {
        "devices": [
            "junk",
            None,
            {"type": "cuda"},  # no size: skipped
            {"type": "cuda", "vram_total": "lots"},  # skipped
            {"type": "cuda", "vram_total": True},  # skipped
            {"type": "mps", "vram_total": GIB},  # not CUDA
            {"type": "cuda", "vram_total": 8 * GIB, "vram_free": 99 * GIB, "index": None},
            good,
        ]
    }
    gpus = gpus_from_system_stats(stats, instance_index=5)
    assert [(g.index, g.name, g.vram_free_mb, g.vram_used_mb) for g in gpus] == [
        (5, "cuda:5", 8192, 0),  # free clamped to total; index falls back to the instance's
        (0, "NVIDIA GeForce RTX 4090", 20992, 3584),
    ]
    assert gpus_from_system_stats({}, 0) == []
    assert gpus_from_system_stats({"devices": {"a": 1}}, 0) == []
    assert gpus_from_system_stats([], 0) == []  # type: ignore[arg-type]


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["cuda", "cpu", "vram_total", "vram_free", "index", "name", "type"]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["type", "name", "index", "vram_total", "vram_free", "devices", "x"]),
            children,
            max_size=7,
        )
    ),
    max_leaves=30,
)

device_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["cuda", "cpu"]) | json_like,
        "name": json_like,
        "index": json_like,
        "vram_total": st.integers() | st.floats() | json_like,
        "vram_free": st.integers() | st.floats() | json_like,
    },
)


@settings(max_examples=200, deadline=None)
@given(
    stats=st.dictionaries(st.text(max_size=10), json_like, max_size=4)
    | st.fixed_dictionaries({"devices": st.lists(device_like | json_like, max_size=5)}),
    instance_index=st.integers(min_value=0, max_value=64),
)
def test_gpus_from_system_stats_never_raises(stats: dict[str, Any], instance_index: int) -> None:
    for gpu in gpus_from_system_stats(stats, instance_index):
        assert gpu.source == "comfyui"
        assert gpu.vram_total_mb >= 0
        assert 0 <= gpu.vram_free_mb <= gpu.vram_total_mb
        assert gpu.vram_used_mb == gpu.vram_total_mb - gpu.vram_free_mb
        assert gpu.index >= 0

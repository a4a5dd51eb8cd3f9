"""Which host GPU a ComfyUI instance runs on. A ComfyUI started with `--cuda-device N` sees only
that GPU, as cuda:0, so its /system_stats device index is no help: the agent maps the instance
by its configured GPU, else by N from the argv ComfyUI reports, else by its position."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.daemon import Agent
from comfyfleet.agent.probe import NvmlProbe, ResourceProbe, cuda_device_arg, instance_gpu
from comfyfleet.shared.settings import ConfigError
from tests.unit.test_probe import GIB, make_fake_nvml

pytestmark = pytest.mark.timeout(30)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def comfyui_on_gpu(n: int | None, style: str = "split") -> dict[str, Any]:
    """/system_stats of a ComfyUI started with --cuda-device n (None: without it), built from
    the recorded answer with the CUDA device such a ComfyUI lists: always cuda:0."""
    stats = copy.deepcopy(json.loads((FIXTURES / "system_stats_cpu.json").read_text()))
    argv = [a for a in stats["system"]["argv"] if a != "--cpu"]
    if n is not None:
        argv += ["--cuda-device", str(n)] if style == "split" else [f"--cuda-device={n}"]
    stats["system"]["argv"] = argv
    stats["devices"] = [
        {
            "name": "cuda:0 NVIDIA A100-SXM4-80GB : cudaMallocAsync",
            "type": "cuda",
            "index": 0,
            "vram_total": 80 * GIB,
            "vram_free": 70 * GIB,
            "torch_vram_total": 6 * GIB,
            "torch_vram_free": 0,
        }
    ]
    return stats


def test_cuda_device_arg_both_spellings_and_junk() -> None:
    assert cuda_device_arg(["main.py", "--cuda-device", "3"]) == 3
    assert cuda_device_arg(["main.py", "--cuda-device=2", "--port", "1"]) == 2
    assert cuda_device_arg(["main.py", "--cuda-device"]) is None
    assert cuda_device_arg(["main.py", "--cuda-device", "x"]) is None
    assert cuda_device_arg("main.py --cuda-device 1") is None
    assert cuda_device_arg(None) is None


def test_instance_gpu_order_of_sources() -> None:
    on_1 = comfyui_on_gpu(1)
    assert instance_gpu(on_1, ordinal=0, configured=None, nvml=True) == 1
    assert instance_gpu(on_1, ordinal=0, configured=3, nvml=True) == 3  # config wins
    assert instance_gpu(comfyui_on_gpu(None), ordinal=2, configured=None, nvml=True) == 2
    cpu = json.loads((FIXTURES / "system_stats_cpu.json").read_text())
    assert instance_gpu(cpu, ordinal=0, configured=None, nvml=False) is None


@given(st.integers(0, 15), st.integers(0, 15), st.sampled_from(["split", "joined"]))
def test_the_device_index_comfyui_lists_never_decides(n: int, ordinal: int, style: str) -> None:
    assert instance_gpu(comfyui_on_gpu(n, style), ordinal, None, nvml=True) == n


class StatsOnly:
    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    async def system_stats(self) -> dict[str, Any]:
        return self.stats


def nvml_probe() -> ResourceProbe:
    gpu = {"name": "NVIDIA A100-SXM4-80GB", "total": 80 * GIB, "used": 10 * GIB}
    fake = make_fake_nvml([dict(gpu, uuid="GPU-0"), dict(gpu, uuid="GPU-1")])
    return ResourceProbe("nvml", nvml_opener=lambda: NvmlProbe.try_open(fake))


async def test_agent_measures_a_cuda_device_1_comfyui_against_gpu_1(tmp_path: Path) -> None:
    config = AgentConfig(
        coordinator_url="http://127.0.0.1:9",
        comfyui_urls=("http://127.0.0.1:9",),
        agent_id="a1",
        data_dir=tmp_path,
    )
    async with aiohttp.ClientSession() as session:
        agent = Agent(config, session, nvml_probe())
        agent.instances["0"].client = StatsOnly(comfyui_on_gpu(1))  # type: ignore[assignment]
        await agent.check_instances()
        assert agent.instances["0"].gpu_index == 1
        gpus = {g.index: g for g in await agent.gpus()}
    # what ComfyUI holds (6 GiB of models) counts as free on GPU 1, where it runs, not GPU 0
    assert gpus[1].vram_free_mb == 76 * 1024 and gpus[0].vram_free_mb == 70 * 1024


async def test_configured_gpu_per_instance(tmp_path: Path) -> None:
    config = AgentConfig(
        coordinator_url="http://127.0.0.1:9",
        comfyui_urls=("http://127.0.0.1:8", "http://127.0.0.1:9"),
        agent_id="a1",
        data_dir=tmp_path,
        comfyui_gpus=(1, 0),
    )
    async with aiohttp.ClientSession() as session:
        agent = Agent(config, session, nvml_probe())
        for inst in agent.instances.values():
            inst.client = StatsOnly(comfyui_on_gpu(None))  # type: ignore[assignment]
        await agent.check_instances()
    assert [i.gpu_index for i in agent.instances.values()] == [1, 0]


def test_configured_gpus_must_match_the_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        AgentConfig(
            coordinator_url="http://127.0.0.1:9",
            comfyui_urls=("http://127.0.0.1:9",),
            agent_id="a1",
            data_dir=tmp_path,
            comfyui_gpus=(0, 1),
        )
    assert err.value.key == "comfyui_gpus"

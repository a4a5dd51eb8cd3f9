"""Planning managed instances from the agent config, and the Docker SDK arguments they become."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from docker.types import DeviceRequest, LogConfig
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent.config import AgentConfig, InstanceConfig
from comfyfleet.agent.probe import HostSnapshot
from comfyfleet.agent.supervise.docker_mode import (
    LABEL_AGENT,
    LABEL_FINGERPRINT,
    LABEL_INSTANCE,
    container_name,
    exit_detail,
    memory_mb,
    run_kwargs,
)
from comfyfleet.agent.supervise.spec import InstanceConfigError, plan, render_command
from comfyfleet.agent.supervise.supervision import host_limits, limit_host
from comfyfleet.daemon_config import layered_values
from comfyfleet.shared.settings import ConfigError


def cfg(**kw: object) -> AgentConfig:
    base: dict[str, object] = {
        "coordinator_url": "http://c:8787",
        "agent_id": "a1",
        "data_dir": Path("/tmp/x"),
    }
    return AgentConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_external_is_one_instance_per_url() -> None:
    specs = plan(cfg(comfyui_urls=("http://h:1/", "http://h:2")), gpu_count=4)
    assert [(s.instance_id, s.kind, s.url) for s in specs] == [
        ("0", "external", "http://h:1"),
        ("1", "external", "http://h:2"),
    ]
    with pytest.raises(InstanceConfigError, match="comfyui_urls"):
        plan(cfg(), gpu_count=0)


def test_process_mode_is_one_instance_per_gpu_or_one_without_gpu() -> None:
    c = cfg(
        comfyui_mode="process", comfyui_command="python main.py --port {port}", comfyui_port=9000
    )
    specs = plan(c, gpu_count=3)
    assert [(s.port, s.gpu, s.url) for s in specs] == [
        (9000, 0, "http://127.0.0.1:9000"),
        (9001, 1, "http://127.0.0.1:9001"),
        (9002, 2, "http://127.0.0.1:9002"),
    ]
    assert specs[1].command == ("python", "main.py", "--port", "9001")
    (only,) = plan(c, gpu_count=0)
    assert only.gpu is None and only.port == 9000
    assert len(plan(cfg(comfyui_mode="process", comfyui_command="x", comfyui_count=2), 0)) == 2


def test_placeholders_are_filled_and_unknown_ones_named() -> None:
    assert render_command(
        "run --listen {host} --port={port} --gpu '{gpu}' {{x}}", port=1, gpu=2, host="h"
    ) == (
        "run",
        "--listen",
        "h",
        "--port=1",
        "--gpu",
        "2",
        "{x}",
    )
    assert render_command("x {gpu}", port=1, gpu=None, host="h") == ("x", "")
    with pytest.raises(InstanceConfigError, match="unknown placeholder 'prot'"):
        render_command("x --port {prot}", port=1, gpu=None, host="h")
    with pytest.raises(InstanceConfigError, match="cannot split"):
        render_command("x 'unclosed", port=1, gpu=None, host="h")


def test_instance_tables_override_the_agent_wide_values() -> None:
    c = cfg(
        comfyui_mode="process",
        comfyui_command="main {port}",
        docker_image="comfy:1",
        docker_mem_limit_mb=8000,
        instances=(
            InstanceConfig(kind="external", url="http://elsewhere:8188"),
            InstanceConfig(port=7000, gpu=1),
            InstanceConfig(kind="docker", mem_limit_mb=16000, cpus=4, models_dir=Path("/m")),
        ),
    )
    ext, proc, dock = plan(c, gpu_count=2)
    assert (ext.kind, ext.url) == ("external", "http://elsewhere:8188")
    assert (proc.kind, proc.port, proc.gpu, proc.command) == ("process", 7000, 1, ("main", "7000"))
    assert dock.docker is not None and dock.kind == "docker" and dock.port == 8190
    assert (dock.docker.mem_limit_mb, dock.docker.cpus) == (16000, 4)
    assert [(m.target, m.read_only) for m in dock.docker.mounts] == [("/opt/ComfyUI/models", True)]


def test_bad_instance_settings_are_named() -> None:
    with pytest.raises(InstanceConfigError, match="comfyui_command"):
        plan(cfg(comfyui_mode="process"), 0)
    with pytest.raises(InstanceConfigError, match="docker_image"):
        plan(cfg(comfyui_mode="docker"), 0)
    with pytest.raises(InstanceConfigError, match="instances.kind"):
        plan(cfg(instances=(InstanceConfig(kind="vm"),)), 0)
    with pytest.raises(InstanceConfigError, match="share a port"):
        plan(
            cfg(
                comfyui_command="x",
                instances=(
                    InstanceConfig(kind="process", port=5),
                    InstanceConfig(kind="process", port=5),
                ),
            ),
            0,
        )


def test_the_fingerprint_follows_what_runs() -> None:
    c = cfg(comfyui_mode="process", comfyui_command="main {port}")
    a = plan(c, 1)[0]
    assert a.fingerprint() == plan(c, 1)[0].fingerprint()
    assert (
        a.fingerprint()
        != plan(cfg(comfyui_mode="process", comfyui_command="main2 {port}"), 1)[0].fingerprint()
    )


def test_the_command_line_and_files_reach_the_config() -> None:
    args = argparse.Namespace(config=None, set=[("instances", '[{"kind": "docker", "cpus": 2}]')])
    values = layered_values("agent", args, env={"COMFYFLEET_DOCKER_IMAGE": "img"})
    assert values["instances"][0].cpus == 2.0 and values["docker_image"] == "img"
    with pytest.raises(ConfigError, match="comfyui_command"):
        layered_values(
            "agent", argparse.Namespace(config=None, set=[]), {"COMFYFLEET_COMFYUI_MODE": "process"}
        )
    with pytest.raises(ConfigError, match="comfyui_mode"):
        layered_values(
            "agent", argparse.Namespace(config=None, set=[]), {"COMFYFLEET_COMFYUI_MODE": "vm"}
        )
    with pytest.raises(ConfigError, match=r"instances: \[0\]\.gpu: expected an integer"):
        layered_values(
            "agent", argparse.Namespace(config=None, set=[("instances", '[{"gpu": "x"}]')]), {}
        )


def docker_spec(**kw: object) -> AgentConfig:
    return cfg(
        comfyui_mode="docker",
        docker_image="comfy:1",
        comfyui_command="python main.py --listen {host} --port {port}",
        docker_mem_limit_mb=12000,
        docker_cpus=3.5,
        docker_shm_size_mb=2048,
        docker_models_dir=Path("/srv/models"),
        docker_custom_nodes_dir=Path("/srv/nodes"),
        docker_input_dir=Path("/srv/in"),
        docker_output_dir=Path("/srv/out"),
        **kw,
    )


def test_container_arguments() -> None:
    spec = plan(docker_spec(), gpu_count=2)[1]
    kw = run_kwargs("a1", spec, 10 << 20, 3)
    assert kw["image"] == "comfy:1" and kw["name"] == "comfyfleet-a1-1" and kw["detach"]
    assert kw["network_mode"] == "host" and kw["privileged"] is False
    assert kw["mem_limit"] == kw["memswap_limit"] == "12000m"
    assert kw["nano_cpus"] == 3_500_000_000 and kw["shm_size"] == "2048m"
    assert kw["command"] == ["python", "main.py", "--listen", "127.0.0.1", "--port", "8189"]
    assert kw["labels"] == {
        LABEL_AGENT: "a1",
        LABEL_INSTANCE: "1",
        LABEL_FINGERPRINT: spec.fingerprint(),
    }
    assert kw["volumes"] == {
        "/srv/models": {"bind": "/opt/ComfyUI/models", "mode": "ro"},
        "/srv/nodes": {"bind": "/opt/ComfyUI/custom_nodes", "mode": "ro"},
        "/srv/in": {"bind": "/opt/ComfyUI/input", "mode": "rw"},
        "/srv/out": {"bind": "/opt/ComfyUI/output", "mode": "rw"},
    }
    (req,) = kw["device_requests"]
    assert isinstance(req, DeviceRequest)
    assert req["DeviceIDs"] == ["1"] and req["Capabilities"] == [["gpu"]]
    assert isinstance(kw["log_config"], LogConfig) and kw["log_config"]["Config"]["max-file"] == "4"
    none = run_kwargs("a1", plan(docker_spec(docker_gpus="none"), 2)[0], 1 << 20, 1)
    assert "device_requests" not in none
    bare = run_kwargs("a/b", plan(cfg(comfyui_mode="docker", docker_image="i"), 0)[0], 1 << 20, 1)
    assert not {"mem_limit", "nano_cpus", "device_requests", "command"} & set(bare)
    assert bare["name"] == container_name("a/b", "0") == "comfyfleet-a-b-0"


def test_container_state_and_memory() -> None:
    assert exit_detail({"Running": True, "Paused": True}) is None
    assert exit_detail({"Running": False, "ExitCode": 137, "OOMKilled": True}) == (
        "container exit code 137 (killed: out of memory)"
    )
    assert (
        memory_mb({"memory_stats": {"usage": 300 << 20, "stats": {"inactive_file": 100 << 20}}})
        == 200
    )
    assert memory_mb({"memory_stats": {"usage": 50 << 20, "stats": {"cache": 10 << 20}}}) == 40
    assert memory_mb({"memory_stats": {}}) is None


def test_containers_limits_are_the_agents_capacity() -> None:
    host = HostSnapshot("h", 32, 0.5, 1.0, 128000, 100000)
    limits = host_limits(plan(docker_spec(), gpu_count=2))
    assert limits == (24000, 7.0)
    h = limit_host(host, limits)
    assert (h.ram_total_mb, h.ram_available_mb, h.cpu_count) == (24000, 24000, 7)
    assert host_limits(plan(cfg(comfyui_mode="process", comfyui_command="x"), 1)) is None
    assert limit_host(host, None) == host
    unlimited = host_limits(plan(cfg(comfyui_mode="docker", docker_image="i"), 1))
    assert limit_host(host, unlimited) == host


@given(
    port=st.integers(1, 65535),
    gpu=st.none() | st.integers(0, 15),
    host=st.sampled_from(["127.0.0.1", "::1", "h"]),
)
def test_rendering_never_leaves_a_placeholder(port: int, gpu: int | None, host: str) -> None:
    argv = render_command(
        "c {host}:{port} --cuda {gpu} --x {{literal}}", port=port, gpu=gpu, host=host
    )
    assert (
        "{port}" not in " ".join(argv) and argv[1] == f"{host}:{port}" and argv[-1] == "{literal}"
    )

"""Docker mode against a real Docker engine: the agent runs the simulator as a container (an
image built here with `docker import`) and heals it; plus the container's limits and mounts,
and a restarted agent finding its containers by label."""

from __future__ import annotations

import shlex
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import procs
from tests.helpers.docker_engine import EngineUnavailable, build_sim_image, docker_engine
from tests.helpers.fleet import Api, Fleet, api_session, txt2img
from tests.helpers.managed import ENDED, managed_fleet
from tests.integration import heal_scenarios as sc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MEM_MB = 768
SIM = "python3 -m comfyfleet comfyui-sim --data-dir /opt/ComfyUI"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, str]]:
    workdir = tmp_path_factory.mktemp("docker")
    try:
        with docker_engine(workdir) as (client, url):
            yield client, url, build_sim_image(client, workdir)
    except EngineUnavailable as exc:
        pytest.fail(f"no Docker engine for the docker-mode tests: {exc}")


class DockerHarness:
    def __init__(self, fleet: Fleet, engine: tuple[Any, str, str]) -> None:
        self.fleet = fleet
        self.client, self.url, self.image = engine
        self.args: dict[str, tuple[str, tuple[str, ...], int]] = {}
        self.nodes = fleet.tmp / "custom_nodes"
        self.models = fleet.tmp / "models"
        for d in (self.nodes, self.models, fleet.tmp / "in", fleet.tmp / "out"):
            d.mkdir(exist_ok=True)

    def sim_line(self, *sim_args: str) -> str:
        return f'{SIM} {shlex.join(sim_args)} --listen 127.0.0.1:"$1"'

    def start_agent(self, name: str, *agent_args: str, sim_args: tuple[str, ...] = ()) -> None:
        command = f"{SIM} {shlex.join(sim_args)} --listen {{host}}:{{port}}"
        self._start(name, command, agent_args)

    def start_agent_with_script(self, name: str, script: Path, *agent_args: str) -> None:
        assert script.parent == self.nodes, "the script must be in the mounted custom_nodes"
        self._start(name, f"sh /opt/ComfyUI/custom_nodes/{script.name} {{port}}", agent_args)

    def _start(
        self, name: str, command: str, agent_args: tuple[str, ...], port: int | None = None
    ) -> None:
        port = port or procs.free_port()
        self.args[name] = (command, agent_args, port)
        tmp = self.fleet.tmp
        self.fleet.agents[name] = procs.Proc(
            f"agent-{name}",
            [
                "agent",
                "--coordinator", self.fleet.url,
                "--comfyui-mode", "docker",
                "--docker-image", self.image,
                "--comfyui-command", command,
                "--comfyui-port", str(port),
                "--docker-mem-limit-mb", str(MEM_MB),
                "--docker-cpus", "1.5",
                "--agent-id", name,
                "--data-dir", str(tmp / f"agent-{name}"),
                "--stall", "1",
                "--drain-grace", "5",
                "--set", f"docker_url={self.url}",
                "--set", f"docker_models_dir={self.models}",
                "--set", f"docker_custom_nodes_dir={self.nodes}",
                "--set", f"docker_input_dir={tmp / 'in'}",
                "--set", f"docker_output_dir={tmp / 'out'}",
                "--set", "docker_shm_size_mb=128",
                "--set", "heal_http_silent_s=3",
                "--set", "backoff_max_s=2",
                "--set", "comfyui_stop_grace_s=3",
                *agent_args,
            ],
            tmp,
            f"{self.fleet.url}/v1/agents/{name}",
        ).start(wait=False)  # fmt: skip
        self.fleet.sim_urls[name] = f"http://127.0.0.1:{port}"

    def container(self, name: str) -> Any:
        found = self.client.containers.list(
            all=True, filters={"label": [f"comfyfleet.agent={name}", "comfyfleet.instance=0"]}
        )
        assert len(found) == 1, [c.name for c in found]
        return found[0]

    def kill_instance(self, name: str) -> None:
        self.container(name).kill()

    def freeze_instance(self, name: str) -> None:
        self.container(name).pause()

    def instance_token(self, name: str) -> str:
        return str(self.container(name).id)

    def kill_agent(self, name: str) -> None:
        self.fleet.agents[name].kill(signal.SIGKILL)

    def restart_agent(self, name: str) -> None:
        command, agent_args, port = self.args[name]
        self._start(name, command, agent_args, port)


@pytest.fixture
def fleet(tmp_path: Path, engine: tuple[Any, str, str]) -> Iterator[Fleet]:
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--block-after-failures", "1"]
    try:
        with managed_fleet(tmp_path, args) as f:
            yield f
    finally:
        for c in engine[0].containers.list(all=True):
            c.remove(force=True)


@pytest.fixture
async def api(fleet: Fleet) -> AsyncIterator[Api]:
    async with api_session(fleet.url) as a:
        yield a


@pytest.fixture
def h(fleet: Fleet, engine: tuple[Any, str, str]) -> DockerHarness:
    return DockerHarness(fleet, engine)


async def test_container_has_the_configured_limits_and_mounts(h: DockerHarness, api: Api) -> None:
    h.start_agent("a")
    await api.agents_online({"a"})
    c = h.container("a")
    host = c.attrs["HostConfig"]
    assert host["Memory"] == MEM_MB << 20 and host["MemorySwap"] == MEM_MB << 20
    assert host["NanoCpus"] == 1_500_000_000 and host["ShmSize"] == 128 << 20
    assert host["Privileged"] is False and host["NetworkMode"] == "host"
    assert host["RestartPolicy"]["Name"] in ("", "no")
    mounts = {m["Destination"]: m["RW"] for m in c.attrs["Mounts"]}
    assert mounts == {
        "/opt/ComfyUI/models": False,
        "/opt/ComfyUI/custom_nodes": False,
        "/opt/ComfyUI/input": True,
        "/opt/ComfyUI/output": True,
    }
    # the kernel enforces the limit inside the container (cgroup v1 or v2)
    limit = c.exec_run(
        ["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max"]
    ).output.decode()
    assert str(MEM_MB << 20) in limit, limit
    # the agent reports the container's limits as what jobs may reserve
    async with api.s.get(f"{h.fleet.url}/v1/agents/a") as r:
        agent = await r.json()
    assert agent["host"]["ram_total_mb"] == MEM_MB and agent["host"]["cpu_count"] == 1, agent
    too_big = await api.submit(txt2img(64, 64, steps=2), resources={"ram_mb": MEM_MB + 1})
    fits = await api.submit(txt2img(64, 64, steps=2), resources={"ram_mb": 256, "cpu": 1})
    assert (await api.wait(fits["id"], ENDED, wait_s=40))["status"] == "COMPLETED"
    waiting = await api.job(too_big["id"])
    assert waiting["status"] == "QUEUED" and "ram" in (waiting["pending_reason"] or "").lower()
    assert list((h.fleet.tmp / "out").glob("*.png")), "outputs land in the mounted folder"


async def test_sigkill_mid_job_restarts_and_the_job_completes_free(
    h: DockerHarness, api: Api
) -> None:
    await sc.crash_mid_job(h, api)


async def test_hung_prompt_restarts(h: DockerHarness, api: Api) -> None:
    await sc.hung_prompt(h, api)


async def test_http_silence_restarts(h: DockerHarness, api: Api) -> None:
    await sc.http_silent(h, api)


async def test_silent_websocket_restarts_between_jobs(h: DockerHarness, api: Api) -> None:
    await sc.ws_silent(h, api)


async def test_leak_restarts_between_jobs(h: DockerHarness, api: Api) -> None:
    await sc.leak(h, api)


async def test_crash_loop_backs_off_turns_unhealthy_and_recovers(
    h: DockerHarness, api: Api
) -> None:
    await sc.crash_loop(h, api, h.nodes / "start-comfyui.sh")


async def test_restarted_agent_finds_its_container_by_label(h: DockerHarness, api: Api) -> None:
    await sc.agent_restart_adopts(h, api)
    assert len(h.client.containers.list(all=True)) == 1  # adopted, not duplicated


async def test_a_job_that_breaks_comfyui_twice_fails(h: DockerHarness, api: Api) -> None:
    await sc.breaks_twice_fails(h, api)

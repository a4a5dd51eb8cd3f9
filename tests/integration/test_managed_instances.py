"""The agent runs the simulator as its ComfyUI and heals it: as a process (real processes,
SIGKILL, SIGSTOP) and as a Docker container against a real engine the tests start (an image
made here with `docker import`). Same scenarios for both; plus per kind: the process log, the
container's limits and mounts, adoption by label."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.docker_engine import EngineUnavailable, build_sim_image, docker_engine
from tests.helpers.fleet import Api, Fleet, api_session, txt2img
from tests.helpers.managed import ENDED, managed_fleet
from tests.helpers.managed_harness import (
    MEM_MB,
    DockerHarness,
    ProcessHarness,
    remove_containers,
)
from tests.integration import heal_scenarios as sc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
KINDS = ["process", "docker"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, str]]:
    """A private dockerd and the simulator's image, for the docker tests of this module."""
    workdir = tmp_path_factory.mktemp("docker")
    try:
        with docker_engine(workdir) as (client, url):
            yield client, url, build_sim_image(client, workdir)
    except EngineUnavailable as exc:
        pytest.fail(f"no Docker engine for the docker-mode tests: {exc}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--block-after-failures", "1"]
    with managed_fleet(tmp_path, args) as f:
        yield f


@pytest.fixture
async def api(fleet: Fleet) -> AsyncIterator[Api]:
    async with api_session(fleet.url) as a:
        yield a


@pytest.fixture(params=KINDS)
def h(request: pytest.FixtureRequest, fleet: Fleet) -> Iterator[ProcessHarness | DockerHarness]:
    if request.param == "process":
        yield ProcessHarness(fleet)
        return
    engine = request.getfixturevalue("engine")
    try:
        yield DockerHarness(fleet, engine)
    finally:
        remove_containers(engine)


@pytest.fixture
def docker_h(fleet: Fleet, engine: tuple[Any, str, str]) -> Iterator[DockerHarness]:
    try:
        yield DockerHarness(fleet, engine)
    finally:
        remove_containers(engine)


def comfyui_starts(h: ProcessHarness | DockerHarness) -> int | None:
    """Process mode: how often the agent started ComfyUI (its one log says so each time)."""
    if isinstance(h, DockerHarness):
        return None
    log = (h.fleet.tmp / "agent-a" / "logs" / "comfyui-0.log").read_text()
    return log.count("comfyfleet starts ComfyUI")


async def test_sigkill_mid_job_restarts_and_the_job_completes_free(
    h: ProcessHarness | DockerHarness, api: Api
) -> None:
    await sc.crash_mid_job(h, api)
    assert comfyui_starts(h) in (None, 2)  # one log, both runs


async def test_hung_prompt_restarts(h: ProcessHarness | DockerHarness, api: Api) -> None:
    await sc.hung_prompt(h, api)


async def test_http_silence_restarts(h: ProcessHarness | DockerHarness, api: Api) -> None:
    await sc.http_silent(h, api)


async def test_silent_websocket_restarts_between_jobs(
    h: ProcessHarness | DockerHarness, api: Api
) -> None:
    await sc.ws_silent(h, api)


async def test_leak_restarts_between_jobs(h: ProcessHarness | DockerHarness, api: Api) -> None:
    await sc.leak(h, api)


async def test_crash_loop_backs_off_turns_unhealthy_and_recovers(
    h: ProcessHarness | DockerHarness, api: Api
) -> None:
    await sc.crash_loop(h, api, h.script_dir() / "start-comfyui.sh")


async def test_agent_restart_adopts_the_running_instance(
    h: ProcessHarness | DockerHarness, api: Api
) -> None:
    await sc.agent_restart_adopts(h, api)
    assert comfyui_starts(h) in (None, 1)  # never a second copy
    if isinstance(h, DockerHarness):
        assert len(h.client.containers.list(all=True)) == 1  # found by label, not duplicated


async def test_a_job_that_breaks_comfyui_twice_fails(
    h: ProcessHarness | DockerHarness, api: Api
) -> None:
    await sc.breaks_twice_fails(h, api)


async def test_container_has_the_configured_limits_and_mounts(
    docker_h: DockerHarness, api: Api
) -> None:
    h = docker_h
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

"""Process mode: the agent starts the simulator as its ComfyUI (real processes) and heals it."""

from __future__ import annotations

import os
import shlex
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import Api, Fleet, api_session
from tests.helpers.managed import add_managed_agent, instance_record, managed_fleet, sim_command
from tests.integration import heal_scenarios as sc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


class ProcessHarness:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.args: dict[str, tuple[str, tuple[str, ...]]] = {}

    def sim_line(self, *sim_args: str) -> str:
        return sim_command(self.fleet.tmp, "script", *sim_args, listen='127.0.0.1:"$1"')

    def start_agent(self, name: str, *agent_args: str, sim_args: tuple[str, ...] = ()) -> None:
        self._start(name, sim_command(self.fleet.tmp, name, *sim_args), agent_args)

    def start_agent_with_script(self, name: str, script: Path, *agent_args: str) -> None:
        self._start(name, f"sh {shlex.quote(str(script))} {{port}}", agent_args)

    def _start(self, name: str, command: str, agent_args: tuple[str, ...]) -> None:
        self.args[name] = (command, agent_args)
        add_managed_agent(self.fleet, name, command, *agent_args)

    def _pid(self, name: str) -> int:
        rec = instance_record(self.fleet, name)
        assert rec is not None, f"agent {name} recorded no instance"
        return int(rec["pid"])

    def kill_instance(self, name: str) -> None:
        os.kill(self._pid(name), signal.SIGKILL)

    def freeze_instance(self, name: str) -> None:
        os.kill(self._pid(name), signal.SIGSTOP)

    def instance_token(self, name: str) -> str:
        return str(self._pid(name))

    def kill_agent(self, name: str) -> None:
        self.fleet.agents[name].kill(signal.SIGKILL)

    def restart_agent(self, name: str) -> None:
        command, agent_args = self.args[name]
        port = self.fleet.sim_urls[name].rsplit(":", 1)[1]
        add_managed_agent(self.fleet, name, command, *agent_args, port=int(port))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--block-after-failures", "1"]
    with managed_fleet(tmp_path, args) as f:
        yield f


@pytest.fixture
async def api(fleet: Fleet) -> AsyncIterator[Api]:
    async with api_session(fleet.url) as a:
        yield a


@pytest.fixture
def h(fleet: Fleet) -> ProcessHarness:
    return ProcessHarness(fleet)


async def test_sigkill_mid_job_restarts_and_the_job_completes_free(
    h: ProcessHarness, api: Api
) -> None:
    await sc.crash_mid_job(h, api)
    log = (h.fleet.tmp / "agent-a" / "logs" / "comfyui-0.log").read_text()
    assert log.count("comfyfleet starts ComfyUI") == 2  # one log, both runs


async def test_hung_prompt_restarts(h: ProcessHarness, api: Api) -> None:
    await sc.hung_prompt(h, api)


async def test_http_silence_restarts(h: ProcessHarness, api: Api) -> None:
    await sc.http_silent(h, api)


async def test_silent_websocket_restarts_between_jobs(h: ProcessHarness, api: Api) -> None:
    await sc.ws_silent(h, api)


async def test_leak_restarts_between_jobs(h: ProcessHarness, api: Api) -> None:
    await sc.leak(h, api)


async def test_crash_loop_backs_off_turns_unhealthy_and_recovers(
    h: ProcessHarness, api: Api, tmp_path: Path
) -> None:
    await sc.crash_loop(h, api, tmp_path / "start-comfyui.sh")


async def test_agent_restart_adopts_the_running_instance(h: ProcessHarness, api: Api) -> None:
    await sc.agent_restart_adopts(h, api)
    log = (h.fleet.tmp / "agent-a" / "logs" / "comfyui-0.log").read_text()
    assert log.count("comfyfleet starts ComfyUI") == 1  # never a second copy


async def test_a_job_that_breaks_comfyui_twice_fails(h: ProcessHarness, api: Api) -> None:
    await sc.breaks_twice_fails(h, api)

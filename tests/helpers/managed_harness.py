"""How the healing tests run an agent whose ComfyUI is the simulator: as a process the agent
starts (ProcessHarness), or as a container in a private Docker engine (DockerHarness). The
scenarios (tests/integration/heal_scenarios.py) are the same for both."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path
from typing import Any

from tests.helpers import procs
from tests.helpers.fleet import Fleet
from tests.helpers.managed import add_managed_agent, instance_record, sim_command

MEM_MB = 768  # the containers' memory limit
SIM = "python3 -m comfyfleet comfyui-sim --data-dir /opt/ComfyUI"  # inside the image


class ProcessHarness:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.args: dict[str, tuple[str, tuple[str, ...]]] = {}

    def sim_line(self, *sim_args: str) -> str:
        return sim_command(self.fleet.tmp, "script", *sim_args, listen='127.0.0.1:"$1"')

    def start_agent(self, name: str, *agent_args: str, sim_args: tuple[str, ...] = ()) -> None:
        self._start(name, sim_command(self.fleet.tmp, name, *sim_args), agent_args)

    def script_dir(self) -> Path:
        return self.fleet.tmp

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

    def script_dir(self) -> Path:
        return self.nodes  # mounted read-only in the container

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


def remove_containers(engine: tuple[Any, str, str]) -> None:
    for c in engine[0].containers.list(all=True):
        c.remove(force=True)

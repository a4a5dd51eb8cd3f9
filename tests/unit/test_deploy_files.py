"""deploy/: the systemd units, example configs and container files are usable as shipped."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.supervise.spec import plan
from comfyfleet.daemon_config import layered_values
from comfyfleet.main import build_parser
from comfyfleet.shared.settings import build

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = {
    "coordinator": DEPLOY / "systemd" / "comfyfleet-coordinator.service",
    "agent": DEPLOY / "systemd" / "comfyfleet-agent.service",
    # one of several coordinators on a PostgreSQL store (leader or follower)
    "coordinator-shared": DEPLOY / "systemd" / "comfyfleet-coordinator-shared.service",
}


def daemon(name: str) -> str:
    """The daemon a unit runs: coordinator-shared is a coordinator."""
    return name.split("-")[0]


HARDENING = (
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectControlGroups",
    "RestrictSUIDSGID",
    "RestrictNamespaces",
    "LockPersonality",
    "SystemCallFilter",
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's format: sections, KEY=VALUE, repeated keys kept in order, # and ; comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and re.fullmatch(r"[A-Za-z]+", key), (
            f"{path.name}:{number}: not KEY=VALUE in a section: {raw!r}"
        )
        current.setdefault(key, []).append(value)
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key} missing"
    return values[-1]


@pytest.mark.parametrize("role", sorted(UNITS))
def test_unit_has_the_promised_shape(role: str) -> None:
    unit = parse_unit(UNITS[role])
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "Service", "User") == one(unit, "Service", "Group") == "comfyfleet"
    assert one(unit, "Service", "StateDirectory") == f"comfyfleet/{daemon(role)}"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    for key in HARDENING:
        value = one(unit, "Service", key)
        assert value not in ("no", "false", ""), key
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    if role == "agent":
        assert "comfyui.service" in one(unit, "Unit", "After").split()
        assert "ExecReload" not in unit["Service"]
        assert "PrivateDevices" not in unit["Service"]  # NVML needs /dev/nvidia*
    else:
        assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


@pytest.mark.parametrize("role", sorted(UNITS))
def test_unit_command_exists_and_its_arguments_parse(role: str) -> None:
    unit = parse_unit(UNITS[role])
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[0] == "/opt/comfyfleet/.venv/bin/comfyfleet"
    installed = Path(sys.prefix) / "bin" / "comfyfleet"  # the same entry point, in this venv
    assert installed.exists() and installed.stat().st_mode & 0o111
    args = build_parser().parse_args(argv[1:])
    assert args.command == daemon(role)
    config = Path(args.config)
    assert config.parent == Path("/etc/comfyfleet")
    assert (DEPLOY / "config" / config.name).exists(), "ship an example for the config it reads"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed; the parse tests above still ran",
)
@pytest.mark.parametrize("role", sorted(UNITS))
def test_systemd_analyze_verify_accepts_the_unit(role: str, tmp_path: Path) -> None:
    verify(UNITS[role].read_text(), tmp_path / UNITS[role].name)


def verify(text: str, unit: Path) -> None:
    """`systemd-analyze verify` on the unit, rewritten only to run this venv's comfyfleet, so
    the check that the command exists looks at a real file."""
    unit.write_text(
        text.replace(
            "/opt/comfyfleet/.venv/bin/comfyfleet", str(Path(sys.prefix) / "bin" / "comfyfleet")
        )
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "Unknown" not in report and "not executable" not in report, report


@pytest.mark.parametrize(
    "name", ["coordinator", "agent", "agent-process", "agent-docker", "coordinator-shared"]
)
def test_example_configs_load_with_no_unknown_keys(name: str) -> None:
    role = daemon(name)
    args = argparse.Namespace(config=DEPLOY / "config" / f"{name}.toml", set=[])
    values = layered_values(role, args, env={})
    assert values["data_dir"] == Path(f"/var/lib/comfyfleet/{role}")
    assert not any("token" in key for key in values), "secrets belong in the env file"
    assert "store" not in values, "the store URL holds a password: it belongs in the env file"


def test_the_shared_coordinator_writes_the_shared_outputs_and_reads_its_store_from_env() -> None:
    unit = parse_unit(UNITS["coordinator-shared"])
    args = argparse.Namespace(config=DEPLOY / "config" / "coordinator-shared.toml", set=[])
    values = layered_values("coordinator", args, env={})
    shared = one(unit, "Unit", "RequiresMountsFor")
    assert values["outputs_root"] == Path(one(unit, "Service", "ReadWritePaths"))
    assert values["outputs_root"].is_relative_to(shared)
    assert values["keys_file"].is_relative_to(shared)
    assert values["advertise_url"].startswith("https://")
    env_file = Path(one(unit, "Service", "EnvironmentFile"))
    example = DEPLOY / "config" / f"{env_file.stem}.env.example"
    env = dict(
        line.split("=", 1)
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    )
    with_env = layered_values("coordinator", args, env=env)
    assert with_env["store"].startswith("postgresql://")


@pytest.mark.parametrize("role", ["coordinator", "agent"])
def test_container_files_copy_what_exists_and_run_the_right_command(role: str) -> None:
    text = (DEPLOY / "container" / f"Containerfile.{role}").read_text()
    for source in re.findall(r"^COPY (\S+)", text, re.M):
        if source != "--from":
            assert (ROOT / source).exists(), source
    assert re.search(r"^USER comfyfleet$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    args = build_parser().parse_args(json.loads(cmd.group(1)))
    assert args.command == role


def test_stop_timeouts_leave_room_for_the_graceful_stop() -> None:
    """systemd must not SIGKILL a daemon that is still finishing requests or draining."""
    for role, grace_key, extra in (
        ("coordinator", "shutdown_grace_s", 10.0),
        ("agent", "drain_grace_s", 30.0),
        ("coordinator-shared", "shutdown_grace_s", 10.0),
    ):
        args = argparse.Namespace(config=DEPLOY / "config" / f"{role}.toml", set=[])
        grace = layered_values(daemon(role), args, env={})[grace_key]
        stop = float(one(parse_unit(UNITS[role]), "Service", "TimeoutStopSec"))
        assert grace + extra < stop, (role, grace, stop)


DROP_INS = {
    mode: DEPLOY / "systemd" / "comfyfleet-agent.service.d" / f"{mode}.conf"
    for mode in ("process", "docker")
}


def agent_config(mode: str) -> AgentConfig:
    args = argparse.Namespace(config=DEPLOY / "config" / f"agent-{mode}.toml", set=[])
    values = layered_values("agent", args, env={})
    values.setdefault("agent_id", "gpu-host-01")
    config: AgentConfig = build(AgentConfig, values)
    return config


@pytest.mark.parametrize("mode", sorted(DROP_INS))
def test_agent_unit_has_a_drop_in_and_an_example_per_managed_mode(mode: str) -> None:
    drop = parse_unit(DROP_INS[mode])
    assert set(drop) <= {"Unit", "Service"}
    assert "comfyui.service" in one(drop, "Unit", "Conflicts").split()  # no second ComfyUI
    config = agent_config(mode)
    assert config.comfyui_mode == mode
    specs = plan(config, gpu_count=2)  # one ComfyUI per GPU
    assert [(s.kind, s.port, s.gpu) for s in specs] == [(mode, 8188, 0), (mode, 8189, 1)]
    if mode == "process":
        # ComfyUI runs as the agent's child: the agent stops it on SIGTERM, leftovers die too
        assert one(drop, "Service", "KillMode") == "mixed"
        assert "/opt/ComfyUI" in one(drop, "Service", "ReadWritePaths").split()
        assert specs[0].command[0].startswith("/opt/ComfyUI/")
        grace = config.drain_grace_s + config.comfyui_stop_grace_s + 30.0
        assert grace < float(one(drop, "Service", "TimeoutStopSec"))
    else:
        # the Docker socket (root:docker 0660); containers outlive the agent and are adopted
        assert "docker" in one(drop, "Service", "SupplementaryGroups").split()
        assert "docker.service" in one(drop, "Unit", "After").split()
        assert "KillMode" not in drop["Service"]
        assert specs[0].docker is not None and specs[0].docker.mem_limit_mb > 0
        assert all(m.read_only for m in specs[0].docker.mounts if m.target.endswith("models"))
    unit = parse_unit(UNITS["agent"])
    for key in HARDENING:  # the drop-in keeps the hardening of the unit
        assert key not in drop.get("Service", {}), key
    assert one(unit, "Service", "NoNewPrivileges") == "yes"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed; the parse tests above still ran",
)
@pytest.mark.parametrize("mode", sorted(DROP_INS))
def test_systemd_analyze_verify_accepts_the_unit_with_its_drop_in(
    mode: str, tmp_path: Path
) -> None:
    """A drop-in is read after the unit: verify the two as one file."""
    text = UNITS["agent"].read_text() + "\n" + DROP_INS[mode].read_text()
    verify(text, tmp_path / "comfyfleet-agent.service")

"""The `comfyfleet` command: one entry point, one subcommand per daemon or tool.

Errors in arguments end in a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from comfyfleet import __version__
from comfyfleet.coordinator.errors import CoordinatorError
from comfyfleet.shared.errors import SharedError


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {port!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {number}")
    return host.strip("[]"), number


def add_coordinator(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.daemon_config import add_config_arguments

    cmd = sub.add_parser("coordinator", help="run the coordinator daemon")
    add_config_arguments(cmd)
    cmd.add_argument(
        "--listen",
        type=parse_listen,
        default=None,
        help="HOST:PORT to serve on (env COMFYFLEET_LISTEN; default 127.0.0.1:8787)",
    )
    cmd.add_argument("--data-dir", type=Path, help="state directory: SQLite store and outputs")
    cmd.add_argument(
        "--comfy-listen",
        metavar="HOST:PORT",
        help="also serve ComfyUI's own API (and /api/...) on HOST:PORT (config comfy_listen)",
    )
    cmd.add_argument(
        "--store",
        metavar="URL",
        help="job store: postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (env COMFYFLEET_STORE;"
        " default: the SQLite file in the data dir)",
    )
    cmd.add_argument("--heartbeat-interval", type=float, dest="heartbeat_interval_s")
    cmd.add_argument("--restart-grace", type=float, dest="restart_grace_s")
    cmd.add_argument("--assign-timeout", type=float, dest="assign_timeout_s")
    cmd.add_argument("--default-vram-mb", type=int)
    cmd.add_argument(
        "--keys-file",
        type=Path,
        help="hashed API keys and agent tokens (default DATA_DIR/keys.json)",
    )
    cmd.add_argument("--tls-cert", type=Path, help="certificate chain (PEM): serve HTTPS")
    cmd.add_argument("--tls-key", type=Path, help="private key (PEM) of --tls-cert")
    cmd.add_argument(
        "--block-after-failures",
        type=int,
        help="agent-specific failures of one workflow shape that block the pair",
    )
    cmd.add_argument(
        "--block-cooldown",
        type=float,
        dest="block_cooldown_s",
        help="seconds a blocked (agent, workflow shape) pair stays blocked",
    )
    cmd.add_argument("--log-level")
    cmd.set_defaults(run=run_coordinator)


COORDINATOR_FLAGS = (
    "data_dir",
    "store",
    "heartbeat_interval_s",
    "restart_grace_s",
    "assign_timeout_s",
    "default_vram_mb",
    "keys_file",
    "tls_cert",
    "tls_key",
    "log_level",
    "block_after_failures",
    "block_cooldown_s",
    "comfy_listen",
)


def _flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_coordinator(args: argparse.Namespace) -> int:
    from comfyfleet.coordinator.app import serve
    from comfyfleet.coordinator.config import CoordinatorConfig
    from comfyfleet.daemon_config import layered_values, process_env
    from comfyfleet.shared.logs import configure
    from comfyfleet.shared.settings import build

    flags = _flags(args, COORDINATOR_FLAGS)
    if args.listen is not None:
        flags["host"], flags["port"] = args.listen
    config: CoordinatorConfig = build(
        CoordinatorConfig, layered_values("coordinator", args, process_env(), flags)
    )
    configure(config.log_level)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create data dir {config.data_dir}: {exc.strerror}") from None
    return asyncio.run(serve(config))


def parse_label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def add_agent(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.daemon_config import add_config_arguments

    cmd = sub.add_parser("agent", help="run the agent daemon on a GPU machine")
    add_config_arguments(cmd)
    cmd.add_argument(
        "--coordinator",
        dest="coordinator_url",
        action="append",
        help="coordinator URL; repeat it, or separate URLs with commas, for several coordinators"
        " on one store (env COMFYFLEET_COORDINATOR_URL)",
    )
    cmd.add_argument(
        "--comfyui",
        action="append",
        dest="comfyui_urls",
        help="a local ComfyUI URL, one per instance/GPU, repeatable "
        "(env COMFYFLEET_COMFYUI_URLS, comma-separated)",
    )
    cmd.add_argument(
        "--agent-id", help="stable agent id (default: kept in the data dir, made from hostname)"
    )
    cmd.add_argument("--data-dir", type=Path)
    cmd.add_argument("--gpu-source", choices=["auto", "nvml", "comfyui"])
    cmd.add_argument(
        "--label",
        type=parse_label,
        action="append",
        default=None,
        help="KEY=VALUE label for placement constraints (repeatable)",
    )
    cmd.add_argument("--drain-grace", type=float, dest="drain_grace_s")
    cmd.add_argument(
        "--stall",
        type=float,
        dest="stall_s",
        help="seconds without ComfyUI events before asking /history",
    )
    cmd.add_argument(
        "--comfyui-timeout",
        type=float,
        dest="comfyui_timeout_s",
        help="seconds one HTTP call to ComfyUI may take (a hung /prompt)",
    )
    cmd.add_argument(
        "--cancel-wait",
        type=float,
        dest="cancel_wait_s",
        help="seconds to wait for ComfyUI to stop a prompt after /interrupt",
    )
    cmd.add_argument(
        "--ca-file", type=Path, help="CA bundle that signed an https coordinator's certificate"
    )
    cmd.add_argument(
        "--capacity",
        type=int,
        choices=range(1, 9),
        metavar="N",
        help="prompts each ComfyUI holds at once (2: the next waits queued inside "
        "ComfyUI while one runs; 1: no pipeline)",
    )
    for kind in ("output", "input"):
        cmd.add_argument(
            f"--comfyui-{kind}-dir",
            type=Path,
            action="append",
            dest=f"comfyui_{kind}_dirs",
            metavar="DIR",
            help=f"ComfyUI's {kind} folder, once per --comfyui in the same order: the agent "
            f"removes the {kind} files its jobs created there once the coordinator has them",
        )
    managed = cmd.add_argument_group(
        "managed ComfyUI (the agent runs it and restarts it when it dies, hangs or leaks)"
    )
    managed.add_argument(
        "--comfyui-mode",
        choices=["external", "process", "docker"],
        help="external: --comfyui URLs run by someone else (default); process: the agent "
        "starts --comfyui-command per GPU; docker: one container per GPU from --docker-image",
    )
    managed.add_argument(
        "--comfyui-command",
        metavar="CMD",
        help="process mode: how to start ComfyUI, e.g. 'python main.py --port {port}' "
        "({port}, {gpu}, {host} are filled in; CUDA_VISIBLE_DEVICES is set)",
    )
    managed.add_argument(
        "--comfyui-port", type=int, metavar="PORT", help="port of the first managed instance"
    )
    managed.add_argument(
        "--comfyui-count",
        type=int,
        metavar="N",
        help="managed instances (default: one per GPU NVML sees, one if none)",
    )
    managed.add_argument("--docker-image", metavar="IMAGE", help="docker mode: ComfyUI's image")
    managed.add_argument("--docker-mem-limit-mb", type=int, metavar="MB")
    managed.add_argument("--docker-cpus", type=float, metavar="N")
    managed.add_argument(
        "--warmup-workflow",
        type=Path,
        metavar="FILE",
        help="API-format workflow run after each (re)start before the instance takes jobs",
    )
    cmd.add_argument("--log-level")
    cmd.set_defaults(run=run_agent)


AGENT_FLAGS = (
    "coordinator_url",
    "agent_id",
    "data_dir",
    "gpu_source",
    "drain_grace_s",
    "stall_s",
    "ca_file",
    "log_level",
    "capacity",
    "comfyui_timeout_s",
    "cancel_wait_s",
    "comfyui_mode",
    "comfyui_command",
    "comfyui_port",
    "comfyui_count",
    "docker_image",
    "docker_mem_limit_mb",
    "docker_cpus",
    "warmup_workflow",
)


def stable_agent_id(data_dir: Path) -> str:
    import secrets
    import socket

    path = data_dir / "agent-id"
    if path.exists():
        return path.read_text().strip()
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
    agent_id = f"{host[:48] or 'agent'}-{secrets.token_hex(3)}"
    path.write_text(agent_id + "\n")
    return agent_id


def run_agent(args: argparse.Namespace) -> int:
    from comfyfleet.agent.config import AgentConfig
    from comfyfleet.agent.serve import serve
    from comfyfleet.daemon_config import layered_values, process_env
    from comfyfleet.shared.logs import configure
    from comfyfleet.shared.settings import build
    from comfyfleet.shared.tls import client_context

    flags = _flags(args, AGENT_FLAGS)
    if args.coordinator_url:
        flags["coordinator_url"] = ",".join(args.coordinator_url)
    if args.comfyui_urls:
        flags["comfyui_urls"] = tuple(args.comfyui_urls)
    if args.label:
        flags["labels"] = dict(args.label)
    for key in ("comfyui_output_dirs", "comfyui_input_dirs"):
        if getattr(args, key):
            flags[key] = tuple(getattr(args, key))
    values = layered_values("agent", args, process_env(), flags)
    if not values.get("coordinator_url"):
        raise CliError(
            "--coordinator URL is required (or set COMFYFLEET_COORDINATOR_URL, "
            "or coordinator_url in the config file)"
        )
    external = values.get("comfyui_mode", "external") == "external"
    if external and not values.get("comfyui_urls") and not values.get("instances"):
        raise CliError(
            "at least one --comfyui URL is required (or set COMFYFLEET_COMFYUI_URLS, "
            "or comfyui_urls in the config file), or --comfyui-mode process|docker"
        )
    if "https:" in values["coordinator_url"]:
        client_context(values.get("ca_file"))  # refuse a bad CA file now, naming the key
    data_dir = values["data_dir"]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        values.setdefault("agent_id", stable_agent_id(data_dir))
    except OSError as exc:
        raise CliError(f"cannot use data dir {data_dir}: {exc.strerror}") from None
    config: AgentConfig = build(AgentConfig, values)
    configure(config.log_level)
    return asyncio.run(serve(config))


def add_comfyui_sim(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.sim.cli import add_arguments

    cmd = sub.add_parser("comfyui-sim", help="run a simulated ComfyUI server")
    add_arguments(cmd)
    cmd.set_defaults(run=run_comfyui_sim)


def run_comfyui_sim(args: argparse.Namespace) -> int:
    from comfyfleet.shared.logs import configure
    from comfyfleet.sim.cli import config_from_args
    from comfyfleet.sim.server import run

    configure(args.log_level)
    run(config_from_args(args))
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.demo import add_demo as add

    add(sub)


def add_config(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.config_cmd import add_config as add

    add(sub)


def add_keys(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.keys_cmd import add_keys as add

    add(sub)


def add_check(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.check_cmd import add_check as add

    add(sub)


def add_client_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.commands_fleet import add_agents, add_top
    from comfyfleet.commands_jobs import add_cancel, add_job, add_jobs, add_submit

    for add in (add_submit, add_jobs, add_job, add_cancel, add_agents, add_top):
        add(sub)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    add_coordinator,
    add_agent,
    add_comfyui_sim,
    add_demo,
    add_config,
    add_keys,
    add_check,
    add_client_commands,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyfleet", description="Run ComfyUI on a fleet of GPU machines as one."
    )
    parser.add_argument("--version", action="version", version=f"comfyfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except CliError as exc:
        print(f"comfyfleet {args.command}: {exc}", file=sys.stderr)
        return 2
    except SharedError as exc:  # a config problem (ConfigError names the key)
        print(f"comfyfleet {args.command}: {exc}", file=sys.stderr)
        return 2
    except CoordinatorError as exc:  # e.g. an unreadable keys file
        print(f"comfyfleet {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

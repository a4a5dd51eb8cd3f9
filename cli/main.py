"""The `comfyfleet` command: one entry point, one subcommand per daemon or tool.

Errors in arguments end in a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from comfyfleet import __version__


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


def env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"COMFYFLEET_{name}", default)


def add_coordinator(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("coordinator", help="run the coordinator daemon")
    cmd.add_argument("--listen", type=parse_listen,
                     default=env_default("LISTEN", "127.0.0.1:8787"),
                     help="HOST:PORT to serve on (env COMFYFLEET_LISTEN; default 127.0.0.1:8787)")
    cmd.add_argument("--data-dir", type=Path, default=env_default("DATA_DIR", "var/coordinator"),
                     help="state directory: SQLite store and outputs (env COMFYFLEET_DATA_DIR)")
    cmd.add_argument("--heartbeat-interval", type=float,
                     default=float(env_default("HEARTBEAT_INTERVAL", "5") or 5))
    cmd.add_argument("--restart-grace", type=float,
                     default=float(env_default("RESTART_GRACE", "30") or 30))
    cmd.add_argument("--assign-timeout", type=float,
                     default=float(env_default("ASSIGN_TIMEOUT", "30") or 30))
    cmd.add_argument("--default-vram-mb", type=int,
                     default=int(env_default("DEFAULT_VRAM_MB", "0") or 0))
    cmd.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"))
    cmd.set_defaults(run=run_coordinator)


def run_coordinator(args: argparse.Namespace) -> int:
    from comfyfleet.coordinator.app import serve
    from comfyfleet.coordinator.config import CoordinatorConfig
    from comfyfleet.shared.logs import configure

    configure(args.log_level)
    host, port = args.listen if isinstance(args.listen, tuple) else parse_listen(args.listen)
    config = CoordinatorConfig(
        data_dir=Path(args.data_dir), host=host, port=port,
        heartbeat_interval_s=args.heartbeat_interval, restart_grace_s=args.restart_grace,
        assign_timeout_s=args.assign_timeout, default_vram_mb=args.default_vram_mb,
    )
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
    cmd = sub.add_parser("agent", help="run the agent daemon on a GPU machine")
    cmd.add_argument("--coordinator", default=env_default("COORDINATOR"),
                     help="coordinator URL (env COMFYFLEET_COORDINATOR)")
    comfyui_env = env_default("COMFYUI")
    cmd.add_argument("--comfyui", action="append",
                     default=comfyui_env.split(",") if comfyui_env else None,
                     help="a local ComfyUI URL, one per instance/GPU (env COMFYFLEET_COMFYUI, "
                          "comma-separated)")
    cmd.add_argument("--agent-id", default=env_default("AGENT_ID"),
                     help="stable agent id (default: kept in the data dir, made from hostname)")
    cmd.add_argument("--data-dir", type=Path, default=env_default("DATA_DIR", "var/agent"))
    cmd.add_argument("--gpu-source", choices=["auto", "nvml", "comfyui"],
                     default=env_default("GPU_SOURCE", "auto"))
    cmd.add_argument("--label", type=parse_label, action="append", default=[],
                     help="KEY=VALUE label for placement constraints (repeatable)")
    cmd.add_argument("--drain-grace", type=float,
                     default=float(env_default("DRAIN_GRACE", "30") or 30))
    cmd.add_argument("--stall", type=float, default=float(env_default("STALL", "10") or 10),
                     help="seconds without ComfyUI events before asking /history")
    cmd.add_argument("--capacity", type=int, choices=range(1, 9), metavar="N",
                     default=int(env_default("CAPACITY", "2") or 2),
                     help="prompts each ComfyUI holds at once (2: the next waits queued inside "
                          "ComfyUI while one runs; 1: no pipeline)")
    cmd.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"))
    cmd.set_defaults(run=run_agent)


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
    from comfyfleet.agent.daemon import serve
    from comfyfleet.shared.logs import configure

    if not args.coordinator:
        raise CliError("--coordinator URL is required (or set COMFYFLEET_COORDINATOR)")
    if not args.comfyui:
        raise CliError("at least one --comfyui URL is required (or set COMFYFLEET_COMFYUI)")
    for url in [args.coordinator, *args.comfyui]:
        if not url.startswith(("http://", "https://")):
            raise CliError(f"{url!r} is not an http(s) URL")
    configure(args.log_level)
    data_dir = Path(args.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        agent_id = args.agent_id or stable_agent_id(data_dir)
    except OSError as exc:
        raise CliError(f"cannot use data dir {data_dir}: {exc.strerror}") from None
    config = AgentConfig(
        coordinator_url=args.coordinator, comfyui_urls=tuple(args.comfyui), agent_id=agent_id,
        data_dir=data_dir, gpu_source=args.gpu_source, labels=dict(args.label),
        drain_grace_s=args.drain_grace, stall_s=args.stall, capacity=args.capacity,
    )
    return asyncio.run(serve(config))


def add_comfyui_sim(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.agent.sim.cli import add_arguments

    cmd = sub.add_parser("comfyui-sim", help="run a simulated ComfyUI server")
    add_arguments(cmd)
    cmd.set_defaults(run=run_comfyui_sim)


def run_comfyui_sim(args: argparse.Namespace) -> int:
    from comfyfleet.agent.sim.cli import config_from_args
    from comfyfleet.agent.sim.server import run
    from comfyfleet.shared.logs import configure

    configure(args.log_level)
    run(config_from_args(args))
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from comfyfleet.demo import add_demo as add

    add(sub)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    add_coordinator,
    add_agent,
    add_comfyui_sim,
    add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyfleet",
                                     description="Run ComfyUI on a fleet of GPU machines as one.")
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

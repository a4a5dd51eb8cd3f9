"""`comfyfleet comfyui-sim`: command-line flags -> SimConfig -> server.run.

Prints exactly one line to stdout once listening (`comfyui-sim listening on http://HOST:PORT`,
the real port when `--listen HOST:0`); everything else goes to the structlog stream on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from comfyfleet.sim.config import FaultSettings, ModelSpec, SimConfig
from comfyfleet.sim.server import run

__all__ = ["add_arguments", "add_subcommand", "config_from_args", "main", "parse_listen"]

DEFAULT_LISTEN = "127.0.0.1:8188"


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT`, `:PORT` or `PORT`."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --listen {value!r}: want HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"bad --listen {value!r}: port out of range")
    return host, port


def parse_models(value: str) -> tuple[ModelSpec, ...]:
    """`a.safetensors:2048,b.safetensors` -> model specs (VRAM in MB, default 2048)."""
    out = []
    for item in value.split(","):
        name, _, mb = item.strip().partition(":")
        if not name:
            continue
        try:
            vram = int(mb) if mb else 2048
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad model {item!r}: want NAME[:MB]") from None
        out.append(ModelSpec(name, vram))
    return tuple(out)


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help="address to serve on (port 0: any free port)",
    )
    parser.add_argument("--vram-mb", type=int, default=24576, help="simulated VRAM in MB")
    parser.add_argument("--gpu-name", default="NVIDIA GeForce RTX 4090 (simulated)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var/comfyui-sim"),
        help="holds output/, input/ and temp/",
    )
    parser.add_argument(
        "--step-ms",
        type=_non_negative,
        default=40.0,
        help="sampler time per step at 512x512 (scales with pixels)",
    )
    parser.add_argument(
        "--node-ms", type=_non_negative, default=2.0, help="base time of other nodes"
    )
    parser.add_argument(
        "--load-ms-per-gb",
        type=_non_negative,
        default=150.0,
        help="checkpoint load time per GB when not resident",
    )
    parser.add_argument(
        "--preview-every", type=int, default=2, help="sampler preview frame every N steps (0: none)"
    )
    parser.add_argument(
        "--models",
        type=parse_models,
        default=None,
        metavar="NAME[:MB],...",
        help="checkpoints this install has (VRAM each once loaded; default 2048 MB)",
    )
    parser.add_argument(
        "--hide-node-class",
        action="append",
        default=[],
        metavar="CLASS",
        help="act as if this node class were not installed (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulator's randomness")
    parser.add_argument(
        "--no-request-costs",
        dest="request_costs",
        action="store_false",
        help="answer for free instead of spending a real ComfyUI's measured CPU per request "
        "(/system_stats 1.5 ms, /view 0.35 ms, ...: sim/costs.py)",
    )
    parser.add_argument(
        "--node-cpu",
        action="store_true",
        help="node work spends CPU (as a ComfyUI in CPU mode does: `--node-ms 5` is about what "
        "0.3.64 spends on bench.real_comfy's prompts) instead of waiting as for a GPU",
    )
    parser.add_argument("--log-level", default="info")
    faults = parser.add_argument_group("faults (also POST /sim/faults at runtime)")
    faults.add_argument(
        "--crash-after-s",
        type=_non_negative,
        default=None,
        help="exit abruptly this long after a prompt starts running",
    )
    faults.add_argument(
        "--crash-on-prompt",
        type=int,
        default=None,
        metavar="N",
        help="exit abruptly while running the Nth prompt",
    )
    faults.add_argument(
        "--hang", action="store_true", help="stop executing at the next node (HTTP keeps answering)"
    )
    faults.add_argument(
        "--drop-ws-after-s",
        type=_non_negative,
        default=None,
        help="close the prompt's client WebSocket this long into a run",
    )
    faults.add_argument(
        "--oom-node-class", default=None, help="this node class fails with torch.OutOfMemoryError"
    )
    faults.add_argument(
        "--oom-probability",
        type=_non_negative,
        default=0.0,
        help="chance that a VRAM-using node fails with OOM",
    )
    faults.add_argument(
        "--fail-class-type", default=None, help="this node class fails with an exception"
    )
    faults.add_argument(
        "--slow-start-s", type=_non_negative, default=0.0, help="sleep this long before listening"
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    host, port = args.listen
    faults = FaultSettings(
        crash_after_s=args.crash_after_s,
        crash_on_prompt=args.crash_on_prompt,
        hang=args.hang,
        drop_ws_after_s=args.drop_ws_after_s,
        oom_node_class=args.oom_node_class,
        oom_probability=min(1.0, args.oom_probability),
        fail_class_type=args.fail_class_type,
        slow_start_s=args.slow_start_s,
    )
    return SimConfig.for_data_dir(
        args.data_dir.resolve(),
        host=host,
        port=port,
        vram_mb=args.vram_mb,
        gpu_name=args.gpu_name,
        device=args.device,
        step_ms=args.step_ms,
        node_ms=args.node_ms,
        load_ms_per_gb=args.load_ms_per_gb,
        preview_every=args.preview_every,
        seed=args.seed,
        request_costs=args.request_costs,
        node_cpu=args.node_cpu,
        faults=faults,
        hidden_node_classes=tuple(args.hide_node_class),
        **({"models": args.models} if args.models is not None else {}),
    )


def _run_args(args: argparse.Namespace) -> int:
    from comfyfleet.shared.logs import configure

    configure(args.log_level)
    run(config_from_args(args))
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `comfyui-sim`; the parsed namespace's `func(args)` runs it."""
    parser = subparsers.add_parser("comfyui-sim", help="run the ComfyUI simulator")
    add_arguments(parser)
    parser.set_defaults(func=_run_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyui-sim", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run_args(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m tests.chaos` (or `make chaos ARGS=...`): a long chaos run that prints its figures."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import ChaosConfig, run_chaos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument(
        "--duration",
        type=float,
        default=300.0,
        help="seconds over which jobs are submitted and faults injected",
    )
    ap.add_argument("--fault-gap", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX"))
    ap.add_argument("--coordinator-kills", type=int, default=5)
    ap.add_argument("--settle", type=float, default=300.0)
    ap.add_argument(
        "--coordinators",
        type=int,
        default=1,
        help="coordinators sharing one store (more than 1 needs --store postgres)",
    )
    ap.add_argument(
        "--store",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="postgres: a throwaway PostgreSQL cluster (Debian's postgresql) for every coordinator",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep processes' logs and data here (default: a temporary folder)",
    )
    args = ap.parse_args(argv)
    cfg = ChaosConfig(
        seed=args.seed,
        jobs=args.jobs,
        agents=args.agents,
        duration_s=args.duration,
        fault_gap_s=tuple(args.fault_gap),
        coordinator_kills=args.coordinator_kills,
        settle_s=args.settle,
        coordinators=args.coordinators,
        store=args.store,
    )
    if cfg.coordinators > 1 and cfg.store != "postgres":
        ap.error("--coordinators above 1 needs --store postgres")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(run_chaos(cfg, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="comfyfleet-chaos-") as tmp:
            figures = asyncio.run(run_chaos(cfg, Path(tmp)))
    sys.stdout.write(figures.report() + "\n")
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())

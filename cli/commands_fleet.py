"""`comfyfleet agents | top`: the fleet from the terminal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

from comfyfleet.client.aio import AsyncClient
from comfyfleet.client_args import add_client_options, cli_errors, client_of, print_json
from comfyfleet.render import agents_table, instances_table, jobs_table, progress_line


def add_agents(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("agents", help="agents with per-GPU VRAM, jobs and health")
    add_client_options(cmd)
    cmd.set_defaults(run=cli_errors(run_agents))


def run_agents(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with client_of(args) as client:
            agents = await client.agents()
        if args.json:
            print_json(agents)
        else:
            print(agents_table(agents) if agents else "no agents")
            if any(a.instances for a in agents):
                print()
                print(instances_table(agents, time.time()))
        return 0

    return asyncio.run(go())


def add_top(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("top", help="a live view of the fleet (Ctrl-C to quit)")
    cmd.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="redraw at least this often (seconds); events redraw sooner",
    )
    cmd.add_argument("--once", action="store_true", help="draw one frame and exit")
    add_client_options(cmd, json_flag=False)
    cmd.set_defaults(run=cli_errors(run_top))


async def frame(client: AsyncClient) -> str:
    now = time.time()
    agents = await client.agents()
    active = await client.jobs(["SUBMITTED", "QUEUED", "ASSIGNED", "RUNNING"], limit=200)
    recent = await client.jobs(["COMPLETED", "FAILED", "CANCELLED"], limit=8)
    counts: dict[str, int] = {}
    for j in active.jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    head = f"comfyfleet top  {client.url}  {time.strftime('%H:%M:%S')}   " + "  ".join(
        f"{s.lower()} {counts.get(s, 0)}" for s in ("QUEUED", "ASSIGNED", "RUNNING")
    )
    parts = [head, "", agents_table(agents) if agents else "no agents", ""]
    running = [j for j in active.jobs if j.status in ("RUNNING", "ASSIGNED")]
    for j in running:
        p = {
            "fraction": j.progress.fraction,
            "node_type": j.progress.node_type,
            "value": j.progress.value,
            "max": j.progress.max,
        }
        parts.append(
            f"{j.id}  " + progress_line(j.status, p, j.timestamps.get("RUNNING"), now, j.agent_id)
        )
    waiting = [j for j in active.jobs if j.status in ("SUBMITTED", "QUEUED")]
    if waiting:
        parts += ["", f"queue ({len(waiting)})", jobs_table(waiting[:10], now)]
    if recent.jobs:
        parts += ["", "recently finished", jobs_table(recent.jobs, now)]
    return "\n".join(parts)


async def top(args: argparse.Namespace) -> int:
    async with client_of(args) as client:
        if args.once:
            print(await frame(client))
            return 0
        changed = asyncio.Event()

        async def listen() -> None:
            with contextlib.suppress(Exception):
                async for _ in client.events():
                    changed.set()

        listener = asyncio.create_task(listen())
        try:
            while True:
                text = await frame(client)
                sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
                sys.stdout.flush()
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), args.interval)
                await asyncio.sleep(0.25)  # at most four frames a second
        finally:
            listener.cancel()


def run_top(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(top(args))
    except KeyboardInterrupt:
        return 0

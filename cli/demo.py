"""`comfyfleet demo`: a whole fleet on this machine, a mixed batch of jobs, a checked summary.

Starts a coordinator (SQLite under the data dir), two simulated ComfyUIs of different VRAM and
one agent for each, submits jobs, shows live progress, verifies every output, and exits 0 only
if everything behaved. This is a terminal tool, so it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from comfyfleet.cache_stats import cache_hit_line
from comfyfleet.client import APIError, AsyncClient, ClientError, Job
from comfyfleet.shared import sample_workflows as sample
from comfyfleet.shared.sample_workflows import SD15, SDXL

SIZES = [(512, 512), (768, 512), (512, 768), (640, 640), (1024, 576), (576, 1024), (1024, 1024)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MODEL_MB = {SD15: 2048, SDXL: 6600}


def vram_needed(width: int, height: int, ckpt: str) -> int:
    """What to declare: the model plus about 1 GB of working memory per 512x512, plus margin."""
    return MODEL_MB[ckpt] + int(1024 * width * height / (512 * 512)) + 512


def txt2img(
    width: int, height: int, steps: int = 12, seed: int = -1, ckpt: str = SD15, prefix: str = "demo"
) -> dict[str, Any]:
    return sample.txt2img(
        width,
        height,
        steps=steps,
        seed=seed,
        ckpt=ckpt,
        prefix=prefix,
        text="a lighthouse at dusk",
        negative="blurry",
    )


def invert(width: int, height: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0x3366CC},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }


@dataclass
class DemoJob:
    label: str
    body: dict[str, Any]
    size: tuple[int, int] | None
    expect: str = "COMPLETED"
    cancel_when_running: bool = False
    id: str = ""
    status: str = ""
    record: Job | None = None
    submitted_at: float = 0.0


def batch() -> list[DemoJob]:
    jobs = []
    for i, (w, h) in enumerate(SIZES):
        jobs.append(
            DemoJob(
                f"txt2img {w}x{h}",
                {
                    "workflow": txt2img(w, h, prefix=f"demo{i}"),
                    "resources": {"vram_mb": vram_needed(w, h, SD15)},
                },
                (w, h),
            )
        )
    jobs.append(
        DemoJob(
            "invert 300x200 (no model)",
            {"workflow": invert(300, 200), "resources": {"vram_mb": 500}},
            (300, 200),
        )
    )
    jobs.append(
        DemoJob(
            "big: needs the 24 GB GPU",
            {
                "workflow": txt2img(1024, 1024, ckpt=SDXL, prefix="big"),
                "resources": {"vram_mb": max(16000, vram_needed(1024, 1024, SDXL))},
                "priority": 5,
            },
            (1024, 1024),
        )
    )
    jobs.append(
        DemoJob(
            "long job, cancelled mid-run",
            {
                "workflow": txt2img(512, 512, steps=400, prefix="cancelme"),
                "resources": {"vram_mb": vram_needed(512, 512, SD15)},
            },
            None,
            expect="CANCELLED",
            cancel_when_running=True,
        )
    )
    return jobs


class Fleet:
    def __init__(self, data_dir: Path, step_ms: float) -> None:
        self.data_dir = data_dir
        self.step_ms = step_ms
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.coord_port = free_port()
        self.url = f"http://127.0.0.1:{self.coord_port}"
        self.logs = data_dir / "logs"

    def spawn(self, name: str, args: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "comfyfleet", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self.procs.append((name, proc))

    def start(self) -> list[tuple[str, str, int]]:
        self.spawn(
            "coordinator",
            [
                "coordinator",
                "--listen",
                f"127.0.0.1:{self.coord_port}",
                "--data-dir",
                str(self.data_dir / "coordinator"),
                "--heartbeat-interval",
                "2",
            ],
        )
        gpus = [
            ("gpu24", "NVIDIA GeForce RTX 4090 (simulated)", 24576),
            ("gpu8", "NVIDIA GeForce RTX 3070 (simulated)", 8192),
        ]
        started = []
        for name, gpu, vram in gpus:
            port = free_port()
            self.spawn(
                f"comfyui-{name}",
                [
                    "comfyui-sim",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--vram-mb",
                    str(vram),
                    "--gpu-name",
                    gpu,
                    "--data-dir",
                    str(self.data_dir / f"comfyui-{name}"),
                    "--step-ms",
                    str(self.step_ms),
                ],
            )
            self.spawn(
                f"agent-{name}",
                [
                    "agent",
                    "--coordinator",
                    self.url,
                    "--comfyui",
                    f"http://127.0.0.1:{port}",
                    "--agent-id",
                    f"demo-{name}",
                    "--data-dir",
                    str(self.data_dir / f"agent-{name}"),
                    "--drain-grace",
                    "5",
                ],
            )
            started.append((name, gpu, port))
        return started

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs if proc.poll() is not None]

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def wait_ready(client: AsyncClient, fleet: Fleet, agents: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if fleet.dead():
            raise RuntimeError(f"{', '.join(fleet.dead())} exited; see {fleet.logs}")
        try:
            ready = [
                a
                for a in await client.agents()
                if a.status == "ONLINE" and a.gpus and all(i.get("healthy") for i in a.instances)
            ]
            if len(ready) >= agents:
                return
        except ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"agents did not come online within 60 s; see {fleet.logs}")


def bar(fraction: float | None, width: int = 20) -> str:
    f = max(0.0, min(1.0, fraction or 0.0))
    full = int(f * width)
    return "#" * full + "." * (width - full)


async def run_batch(client: AsyncClient, out_dir: Path) -> int:
    url = client.url
    jobs = batch()
    problems: list[str] = []
    print("\nsubmitting", len(jobs), "jobs and one invalid workflow ...")
    bad = invert(64, 64)
    bad["2"]["inputs"]["image"] = ["99", 0]
    try:
        await client.submit(bad)
        problems.append("the invalid workflow was accepted")
    except APIError as err:
        print(f"  invalid workflow rejected: HTTP {err.status} {err.field}: {err.message}")
        if err.status != 400:
            problems.append("the invalid workflow was not rejected with 400")
    t0 = time.monotonic()
    for job in jobs:
        job.submitted_at = time.monotonic()
        try:
            job.id = (await client.submit(**job.body)).id
        except APIError as err:
            problems.append(f"{job.label}: submit answered {err}")
    cancelled_sent = False
    last_print = 0.0
    while True:
        for job in jobs:
            if not job.id or job.status in ("COMPLETED", "FAILED", "CANCELLED"):
                continue
            job.record = await client.get(job.id)
            job.status = job.record.status
            if (
                job.cancel_when_running
                and job.status == "RUNNING"
                and not cancelled_sent
                and ((job.record.progress.fraction or 0) > 0.05)
            ):
                try:
                    await client.cancel(job.id)
                    cancelled_sent = True
                    print(f"  cancel sent to '{job.label}'")
                except APIError as err:
                    print(f"  cancel of '{job.label}' refused: {err}")
        if time.monotonic() - last_print > 1.0:
            last_print = time.monotonic()
            for job in jobs:
                rec = job.record
                where = (rec.agent_id if rec else None) or "-"
                fraction = rec.progress.fraction if rec else None
                node = (rec.progress.node_type if rec else None) or ""
                print(
                    f"  {job.label:32s} {job.status or 'SUBMITTED':10s} "
                    f"[{bar(fraction)}] {where:12s} {node}"
                )
            print()
        if all(j.status in ("COMPLETED", "FAILED", "CANCELLED") for j in jobs if j.id):
            break
        if time.monotonic() - t0 > 240:
            problems.append("the batch did not finish within 240 s")
            break
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - t0
    problems += await check_outputs(client, jobs, out_dir)
    print_summary(jobs, elapsed, out_dir, url)
    if problems:
        print("\nPROBLEMS:")
        for p in problems:
            print("  -", p)
        return 1
    print("\nall checks passed")
    return 0


async def check_outputs(client: AsyncClient, jobs: list[DemoJob], out_dir: Path) -> list[str]:
    from PIL import Image

    problems = []
    for job in jobs:
        rec = job.record
        if job.status != job.expect:
            err = (rec.error if rec else None) or {}
            problems.append(
                f"{job.label}: ended {job.status}, expected {job.expect} {err.get('message', '')}"
            )
            continue
        if job.expect != "COMPLETED" or rec is None:
            continue
        if not rec.outputs:
            problems.append(f"{job.label}: no outputs")
        for out in rec.outputs:
            target = await client.download(out.url, out_dir / job.id / out.name)
            size = Image.open(io.BytesIO(target.read_bytes())).size
            if job.size and size != job.size:
                problems.append(f"{job.label}: output {out.name} is {size}, wanted {job.size}")
        if job.label.startswith("big") and rec.agent_id != "demo-gpu24":
            problems.append(f"{job.label}: ran on {rec.agent_id}, not the 24 GB GPU")
    return problems


def print_summary(jobs: list[DemoJob], elapsed: float, out_dir: Path, url: str) -> None:
    print(f"\nsummary ({elapsed:.1f} s for the batch)")
    print(f"  {'job':32s} {'status':10s} {'agent':12s} {'wait s':>7s} {'run s':>7s}  output")
    for job in jobs:
        rec = job.record
        ts = rec.timestamps if rec else {}
        wait = ts.get("RUNNING", 0) - ts.get("SUBMITTED", 0) if "RUNNING" in ts else None
        end = ts.get("COMPLETED") or ts.get("CANCELLED") or ts.get("FAILED")
        run = end - ts["RUNNING"] if end and "RUNNING" in ts else None
        outs = ", ".join(o.name for o in rec.outputs) if rec and rec.outputs else "-"
        agent = (rec.agent_id if rec else None) or "-"
        print(
            f"  {job.label:32s} {job.status:10s} {agent:12s} "
            f"{'' if wait is None else f'{wait:7.2f}':>7s} "
            f"{'' if run is None else f'{run:7.2f}':>7s}  {outs}"
        )
    print(
        "\n"
        + cache_hit_line(msgspec.to_builtins(job.record) for job in jobs if job.record is not None)
    )
    print(f"outputs downloaded to   {out_dir}")
    print(f"dashboard               {url}/")
    print(f"API                     {url}/v1/jobs   {url}/v1/agents   {url}/metrics")
    print(f"CLI                     comfyfleet jobs --coordinator {url}")


async def demo(args: argparse.Namespace) -> int:
    data_dir = args.data_dir  # resolved by the caller
    fleet = Fleet(data_dir, args.step_ms)
    print(f"comfyfleet demo: data in {data_dir}")
    started = fleet.start()
    print(f"  coordinator  {fleet.url}  (SQLite: {data_dir / 'coordinator' / 'coordinator.db'})")
    for name, gpu, port in started:
        print(f"  agent demo-{name:6s} -> simulated ComfyUI http://127.0.0.1:{port} ({gpu})")
    try:
        async with AsyncClient(fleet.url) as client:
            await wait_ready(client, fleet, len(started))
            print(f"  fleet is online; dashboard at {fleet.url}/")
            code = await run_batch(client, data_dir / "outputs")
            if args.keep_running:
                print(f"\nthe fleet keeps running; logs in {fleet.logs}. Ctrl-C to stop.")
                while not fleet.dead():  # noqa: ASYNC110 - child processes have no event
                    await asyncio.sleep(1)
            return code
    finally:
        print(f"logs in {fleet.logs}; stopping the fleet ...")
        fleet.stop()


def add_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("demo", help="run a whole simulated fleet and a mixed batch of jobs")
    cmd.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    cmd.add_argument(
        "--step-ms", type=float, default=40.0, help="simulated sampler time per step at 512x512"
    )
    cmd.add_argument(
        "--keep-running", action="store_true", help="leave the fleet up after the batch to explore"
    )
    cmd.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    args.data_dir = Path(args.data_dir).resolve()
    return asyncio.run(demo(args))

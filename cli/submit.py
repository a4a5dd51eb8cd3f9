"""`comfyfleet submit`: send a workflow (API format JSON) as a job; `--wait` follows it and shows
the remaining time the coordinator estimates (learned per workflow shape and GPU model)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


class SubmitError(Exception):
    """A problem to print as one line (exit 2): bad file, refused job, coordinator unreachable."""


def status_line(job: dict[str, Any]) -> str:
    """`RUNNING  45%  KSampler  ~3.2 s left (agent gpu-1)` — one line for a job view."""
    parts = [f"{job.get('status', '?'):9s}"]
    fraction = (job.get("progress") or {}).get("fraction")
    if fraction is not None:
        parts.append(f"{fraction:4.0%}")
    node = (job.get("progress") or {}).get("node_type")
    if node and job.get("status") == "RUNNING":
        parts.append(node)
    eta = job.get("eta") or {}
    if eta.get("remaining_s") is not None and job.get("status") not in TERMINAL:
        parts.append(f"~{eta['remaining_s']:.1f} s left")
    if job.get("pending_reason"):
        parts.append(f"({job['pending_reason']})")
    elif job.get("agent_id"):
        parts.append(f"(agent {job['agent_id']})")
    return "  ".join(parts)


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    try:
        workflow = json.loads(Path(args.workflow).read_text())
    except OSError as exc:
        raise SubmitError(f"cannot read {args.workflow}: {exc.strerror}") from None
    except ValueError as exc:
        raise SubmitError(f"{args.workflow} is not JSON: {exc}") from None
    body: dict[str, Any] = {"workflow": workflow, "priority": args.priority}
    if args.vram_mb is not None:
        body["resources"] = {"vram_mb": args.vram_mb}
    inputs = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        try:
            inputs[name] = base64.b64encode(Path(path).read_bytes()).decode()
        except OSError as exc:
            raise SubmitError(f"cannot read input {path}: {exc.strerror}") from None
    if inputs:
        body["inputs"] = inputs
    return body


async def submit(args: argparse.Namespace) -> int:
    import aiohttp

    body = build_body(args)
    headers = {}
    key = os.environ.get("COMFYFLEET_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    base = args.coordinator.rstrip("/")
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(f"{base}/v1/jobs", json=body) as resp:
                data = await resp.json(content_type=None)
                if resp.status not in (200, 201):
                    err = (data or {}).get("error", {})
                    where = f" ({err['field']})" if err.get("field") else ""
                    raise SubmitError(
                        f"refused: HTTP {resp.status}{where}: {err.get('message', data)}"
                    )
            print(data["id"])
            if not args.wait:
                return 0
            last = ""
            while data["status"] not in TERMINAL:
                await asyncio.sleep(args.poll)
                async with session.get(f"{base}/v1/jobs/{data['id']}") as resp:
                    data = await resp.json()
                line = status_line(data)
                if line != last:
                    print(line, file=sys.stderr)
                    last = line
    except aiohttp.ClientError as exc:
        raise SubmitError(f"cannot reach the coordinator at {base}: {exc}") from None
    for out in data.get("outputs", []):
        print(f"{base}{out['url']}")
    if data["status"] != "COMPLETED":
        err = data.get("error") or {}
        print(f"job {data['id']} {data['status']}: {err.get('message', '')}", file=sys.stderr)
        return 1
    return 0


def add_submit(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("submit", help="submit a workflow (API-format JSON) as a job")
    cmd.add_argument("workflow", help="path of the workflow JSON (ComfyUI 'Save (API Format)')")
    cmd.add_argument(
        "--coordinator",
        default=os.environ.get("COMFYFLEET_COORDINATOR", "http://127.0.0.1:8787"),
        help="coordinator URL (env COMFYFLEET_COORDINATOR)",
    )
    cmd.add_argument(
        "--vram-mb",
        type=int,
        default=None,
        help="VRAM to reserve (default: learned for this workflow, else the coordinator's default)",
    )
    cmd.add_argument("--priority", type=int, default=0)
    cmd.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="an input file (e.g. for LoadImage) to upload with the job",
    )
    cmd.add_argument(
        "--wait",
        action="store_true",
        help="follow the job: status, progress and estimated time left",
    )
    cmd.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    cmd.set_defaults(run=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    from comfyfleet.main import CliError

    try:
        return asyncio.run(submit(args))
    except SubmitError as exc:
        raise CliError(str(exc)) from None

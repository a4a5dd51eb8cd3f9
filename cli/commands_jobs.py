"""`comfyfleet submit | jobs | job | cancel`: jobs from the terminal, through the Python client."""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from comfyfleet.client import Job
from comfyfleet.client.aio import AsyncClient, load_workflow
from comfyfleet.client.errors import UIFormatWorkflow
from comfyfleet.client_args import add_client_options, cli_errors, client_of, print_json
from comfyfleet.render import job_detail, jobs_table, progress_line

EXIT_CODES = {"COMPLETED": 0, "FAILED": 1, "CANCELLED": 2}


def add_submit(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("submit", help="submit an API-format workflow")
    cmd.add_argument("workflow", type=Path, help="workflow JSON file (ComfyUI API format)")
    cmd.add_argument("--vram-mb", type=int, default=None, help="VRAM to reserve")
    cmd.add_argument(
        "--gpus",
        type=int,
        choices=[0, 1],
        default=None,
        help="1 (the default): run on a ComfyUI instance bound to a GPU; 0: run on a CPU-only "
        "ComfyUI instance (a CPU slot). A fleet whose ComfyUIs are all CPU-only refuses "
        "--gpus 1 with a 422 saying so",
    )
    cmd.add_argument("--priority", type=int, default=None)
    cmd.add_argument("--timeout", type=float, default=None, help="job timeout in seconds")
    cmd.add_argument(
        "--idempotency-key",
        default=None,
        help="resubmitting with the same key returns the same job",
    )
    cmd.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="an input file (e.g. for LoadImage) sent with the job; repeatable",
    )
    cmd.add_argument(
        "--wait",
        action="store_true",
        help="follow progress live, download outputs; exit 0/1/2 for completed/failed/cancelled",
    )
    cmd.add_argument(
        "--out",
        type=Path,
        default=None,
        help="with --wait: directory for outputs (default ./outputs/JOB_ID)",
    )
    add_client_options(cmd)
    cmd.set_defaults(run=cli_errors(run_submit))


def run_submit(args: argparse.Namespace) -> int:
    from comfyfleet.main import CliError

    try:
        workflow = load_workflow(args.workflow)
    except UIFormatWorkflow as exc:
        raise CliError(str(exc)) from None
    inputs = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        try:
            inputs[name] = base64.b64encode(Path(path).read_bytes()).decode()
        except OSError as exc:
            raise CliError(f"cannot read input file {path}: {exc.strerror}") from None
    try:
        return asyncio.run(submit(args, workflow, inputs))
    except KeyboardInterrupt:
        print(
            "\nstopped following; the job goes on (`comfyfleet cancel JOB_ID` stops it)",
            file=sys.stderr,
        )
        return 130


async def submit(args: argparse.Namespace, workflow: dict[str, Any], inputs: dict[str, str]) -> int:
    extra: dict[str, Any] = {"inputs": inputs} if inputs else {}
    async with client_of(args) as client:
        job = await client.submit(
            workflow,
            vram_mb=args.vram_mb,
            gpus=args.gpus,
            priority=args.priority,
            timeout_s=args.timeout,
            idempotency_key=args.idempotency_key,
            **extra,
        )
        if not args.wait:
            if args.json:
                print_json(job)
            else:
                print(job.id)
            return 0
        if not args.json:
            print(f"submitted {job.id}", file=sys.stderr)
        final = await follow(client, job, sys.stderr, quiet=args.json)
        if final.status == "COMPLETED":
            out = args.out or Path("outputs") / final.id
            paths = await client.download_outputs(final.id, out)
            if not args.json:
                for path in paths:
                    print(path)
        elif final.error and not args.json:
            err = final.error
            print(f"{final.status}: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        if args.json:
            print_json(final)
        return EXIT_CODES.get(final.status, 1)


async def follow(client: AsyncClient, job: Job, stream: TextIO, quiet: bool = False) -> Job:
    """Draw a live progress line from the job's events until it is terminal.

    On a terminal the line redraws in place; otherwise (a log, a pipe) a line is printed when the
    status or node changes, at every tenth of the way, and at least every few seconds."""
    tty = stream.isatty()
    status, agent = job.status, job.agent_id
    progress: dict[str, Any] = {}
    running_since: float | None = None
    expected_s = (job.eta or {}).get("expected_s")
    last_key: tuple[Any, ...] = ()
    last_print = 0.0
    async for event in client.events(job.id):
        data = event.data
        if event.kind == "job":
            status, agent = data["status"], data.get("agent_id")
            running_since = (data.get("timestamps") or {}).get("RUNNING", running_since)
            if status == "RUNNING" and expected_s is None:  # learned for its GPU model, if any
                expected_s = ((await client.get(job.id)).eta or {}).get("expected_s")
            if status == "QUEUED" and data.get("pending_reason") and not quiet:
                print(f"waiting: {data['pending_reason']}", file=stream)
        elif event.kind == "progress":
            progress = data
            running_since = data.get("running_since") or running_since
        else:
            continue
        if quiet:
            continue
        line = progress_line(status, progress, running_since, time.time(), agent, expected_s)
        now = time.monotonic()
        if tty:
            stream.write("\r\x1b[2K" + line)
            stream.flush()
            continue
        key = (status, progress.get("node"), int((progress.get("fraction") or 0) * 10))
        if key != last_key or now - last_print >= 5.0:
            print(line, file=stream)
            last_key, last_print = key, now
    if tty and not quiet:
        stream.write("\n")
    return await client.get(job.id)


def add_jobs(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("jobs", help="list jobs, newest first")
    cmd.add_argument("--status", default=None, help="comma-separated states, e.g. QUEUED,RUNNING")
    cmd.add_argument("--limit", type=int, default=50)
    add_client_options(cmd)
    cmd.set_defaults(run=cli_errors(run_jobs))


def run_jobs(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with client_of(args) as client:
            page = await client.jobs(args.status, args.limit)
        if args.json:
            print_json(page)
        else:
            print(jobs_table(page.jobs, time.time()))
        return 0

    return asyncio.run(go())


def add_job(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("job", help="show one job: status, progress, error, outputs, history")
    cmd.add_argument("job_id")
    add_client_options(cmd)
    cmd.set_defaults(run=cli_errors(run_job))


def run_job(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with client_of(args) as client:
            job = await client.get(args.job_id)
        if args.json:
            print_json(job)
        else:
            print(job_detail(job))
        return 0

    return asyncio.run(go())


def add_cancel(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("cancel", help="cancel a job")
    cmd.add_argument("job_id")
    add_client_options(cmd)
    cmd.set_defaults(run=cli_errors(run_cancel))


def run_cancel(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with client_of(args) as client:
            job = await client.cancel(args.job_id)
        if args.json:
            print_json(job)
        elif job.status == "CANCELLED":
            print(f"{job.id} CANCELLED")
        else:
            print(f"{job.id} cancel requested ({job.status}; the agent stops it)")
        return 0

    return asyncio.run(go())

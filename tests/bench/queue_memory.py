"""Coordinator memory with a deep queue: `python -m tests.bench.queue_memory --jobs 50000`.

Starts a real coordinator process (no agents, so every job stays QUEUED), submits the jobs over
HTTP, and prints the coordinator's RSS as the queue grows, then again after a SIGKILL and restart
(recovery loads every open job back into memory). A 429 (the queue bound) stops the run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
import psutil

from tests.helpers import procs
from tests.helpers.fleet import txt2img


def rss_mb(proc: procs.Proc) -> float:
    assert proc.proc is not None
    return psutil.Process(proc.proc.pid).memory_info().rss / 2**20


async def submit_many(url: str, n: int, start: int, concurrency: int = 32) -> tuple[int, int]:
    ok = refused = 0
    body = msgspec.json.encode({"workflow": txt2img(512, 512, steps=20, prefix="mem")})
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> None:
            nonlocal ok, refused
            async with (
                sem,
                s.post(
                    f"{url}/v1/jobs",
                    data=body,
                    headers={
                        "Content-Type": "application/json",
                        "Idempotency-Key": f"mem-{start + i}",
                    },
                ) as r,
            ):
                await r.read()
                if r.status == 201:
                    ok += 1
                elif r.status == 429 and "Retry-After" in r.headers:
                    refused += 1
                else:
                    raise RuntimeError(f"submission {i}: HTTP {r.status}")

        await asyncio.gather(*(one(i) for i in range(n)))
    return ok, refused


async def main_async(jobs: int, step: int, tmp: Path) -> int:
    port = procs.free_port()
    coord = procs.coordinator(tmp / "coord", tmp, port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"{'queued':>8} {'rss_mb':>8} {'kb_per_job':>10} {'submit/s':>9}")
        base = rss_mb(coord)
        print(f"{0:>8} {base:>8.1f} {'':>10} {'':>9}")
        done = 0
        while done < jobs:
            n = min(step, jobs - done)
            t0 = time.monotonic()
            ok, refused = await submit_many(url, n, done)
            rate = n / (time.monotonic() - t0)
            done += ok
            if refused:
                print(f"refused {refused} with 429 + Retry-After")
                break
            rss = rss_mb(coord)
            print(f"{done:>8} {rss:>8.1f} {(rss - base) * 1024 / done:>10.2f} {rate:>9.0f}")
        coord.kill()
        t0 = time.monotonic()
        coord = procs.coordinator(tmp / "coord", tmp, port).start()
        rss = rss_mb(coord)
        print(
            f"after SIGKILL + restart: {rss:.1f} MB RSS, recovered {done} queued jobs "
            f"in {time.monotonic() - t0:.1f} s"
        )
        db = (tmp / "coord" / "coordinator.db").stat().st_size / 2**20
        print(f"database: {db:.1f} MB")
    finally:
        coord.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.queue_memory")
    ap.add_argument("--jobs", type=int, default=50_000)
    ap.add_argument("--step", type=int, default=10_000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="comfyfleet-mem-") as tmp:
        return asyncio.run(main_async(args.jobs, args.step, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())

"""Webhook delivery latency: from a job's COMPLETED (the coordinator's timestamp) to the
receiver holding the signed request.

Real processes: a coordinator (with `webhook_secret` and loopback allowed), a receiver on
loopback in this process that verifies every signature with `standardwebhooks`, and a protocol
agent that completes jobs (no ComfyUI: this measures the outbox, not the GPU). Two runs: jobs
completing one at a time (an idle outbox), and a burst completing together.

    .venv/bin/python -m bench.webhooks [JOBS]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from comfyfleet.coordinator.webhooks.signing import new_secret
from comfyfleet.shared import protocol as p
from tests.helpers.protocol_agent import ProtocolAgent
from tests.helpers.webhook_receiver import Receiver

BURST = 50  # jobs finishing back to back


async def measure(tmp: Path, jobs: int) -> dict[str, Any]:
    secret = new_secret()
    receiver = await Receiver(secret).start()
    coord = common.Coordinator(
        tmp,
        [
            "--set", f"webhook_secret={secret}",
            "--set", "webhook_allow_private_addresses=true",
        ],
    ).start()  # fmt: skip
    try:
        async with common.session() as s:
            agent = ProtocolAgent(s, coord.url, "wh-agent")
            await agent.register()
            one_by_one = await _run(s, coord.url, agent, receiver, jobs, burst=False)
            wide = ProtocolAgent(s, coord.url, "wh-burst", gpus=[("Sim GPU", 24576)] * BURST)
            await wide.register()
            burst = await _run(s, coord.url, wide, receiver, min(jobs, BURST), burst=True)
        unverified = sum(1 for r in receiver.got if not r.verified)
        return {
            "jobs": jobs,
            "one_at_a_time_ms": one_by_one,
            "burst_jobs": min(jobs, BURST),
            "burst_ms": burst,
            "unverified": unverified,
        }
    finally:
        coord.stop()
        await receiver.stop()


async def _run(
    s: Any, url: str, agent: ProtocolAgent, receiver: Receiver, jobs: int, burst: bool
) -> dict[str, float]:
    start = len(receiver.accepted())
    ids = []
    for i in range(jobs):
        async with s.post(
            f"{url}/v1/jobs",
            json={"workflow": common.tiny_workflow(i, 8), "webhook_url": receiver.url},
        ) as r:
            body = await r.json()
            assert r.status == 201, body
            ids.append(body["id"])
        if not burst:
            await agent.run_one(data=b"x" * 64)
            await receiver.wait_for(start + i + 1)
    if burst:  # every job leased (one per GPU) and started first, then all finished together
        leased: list[p.Assignment] = []
        while len(leased) < jobs:
            leased.extend((await agent.lease(2.0)).jobs)
        for job in leased:
            await agent.started(job)
        outs = [await agent.upload(job, "o.png", b"x" * 64) for job in leased]
        await asyncio.gather(
            *(agent.finish(j, outputs=[o]) for j, o in zip(leased, outs, strict=True))
        )
        await receiver.wait_for(start + jobs, timeout_s=120)
    arrived = {r.body["data"]["job_id"]: r.at for r in receiver.accepted()[start:]}
    lat = []
    for job_id in ids:
        async with s.get(f"{url}/v1/jobs/{job_id}") as r:
            job = await r.json()
        lat.append((arrived[job_id] - job["timestamps"]["COMPLETED"]) * 1000)
    return {k: round(v, 2) for k, v in common.percentiles(lat).items()}


def run(tmp: Path, jobs: int) -> dict[str, Any]:
    return asyncio.run(measure(tmp, jobs))


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory(prefix="cf-bench-webhooks-") as d:
        print(json.dumps(run(Path(d), n), indent=2))

"""5. Output streaming: MB/s of output bytes from the simulator through agent and coordinator to a
client download.

Real processes for the simulator and the coordinator; the agent's own code for the two agent hops
(`ComfyUIClient.view` into the spool with its sha256, `CoordinatorClient.upload` in the
coordinator's chunk size), driven from this process for one leased job; then the client
downloads the output. The file is random bytes (incompressible), placed in the simulator's output
folder as a node's output would be.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

from bench import common
from comfyfleet.agent.comfyui.client import ComfyUIClient
from comfyfleet.agent.comfyui.events import OutputRef
from comfyfleet.agent.coordinator_client import CoordinatorClient
from comfyfleet.shared import protocol as p
from tests.helpers import procs
from tests.helpers.protocol_agent import ProtocolAgent


async def measure(
    coord_url: str, sim_url: str, spool: Path, size_mb: int, name: str, coord_pid: int
) -> dict[str, Any]:
    size = size_mb << 20
    async with common.session() as s:
        agent = ProtocolAgent(s, coord_url, "stream-agent")
        reg = await agent.register()
        async with s.post(
            f"{coord_url}/v1/jobs",
            json={"workflow": common.tiny_workflow(1), "resources": {"vram_mb": 1000}},
        ) as r:
            assert r.status == 201, await r.text()
        lease = await agent.lease(5.0)
        job = lease.jobs[0]
        await agent.started(job)
        client = ComfyUIClient(s, sim_url)
        cc = CoordinatorClient(s, f"{coord_url}", "stream-agent", 300.0)
        with common.Sampler(coord_pid) as sampler:
            t0 = time.perf_counter()
            got = await client.view(OutputRef(name, "", "output", "9"), spool / name, size * 2)
            t1 = time.perf_counter()
            await cc.upload(
                p.JobRef(job_id=job.job_id, attempt=job.attempt),
                name,
                spool / name,
                got.size,
                got.sha256,
                reg.chunk_size,
            )
            t2 = time.perf_counter()
        await agent.finish(job, outputs=[p.OutputFile(name=name, size=got.size, sha256=got.sha256)])
        digest = hashlib.sha256()
        received = 0
        t3 = time.perf_counter()
        async with s.get(f"{coord_url}/v1/jobs/{job.job_id}/outputs/{name}") as r:
            assert r.status == 200, await r.text()
            async for chunk in r.content.iter_chunked(1 << 20):
                digest.update(chunk)
                received += len(chunk)
        t4 = time.perf_counter()
    assert received == size and digest.hexdigest() == got.sha256, "download differs"
    mb = size / 1e6
    return {
        "size_mb": round(mb),
        "chunk_size": reg.chunk_size,
        "sim_to_agent_mb_s": round(mb / (t1 - t0)),
        "agent_to_coordinator_mb_s": round(mb / (t2 - t1)),
        "coordinator_to_client_mb_s": round(mb / (t4 - t3)),
        "end_to_end_mb_s": round(mb / ((t2 - t0) + (t4 - t3))),
        "coordinator_during_upload": sampler.summary(),
    }


def run(tmp: Path, size_mb: int = 256) -> dict[str, Any]:
    coord = common.Coordinator(tmp, ["--heartbeat-interval", "5"]).start()
    port = procs.free_port()
    sim = procs.Proc(
        "sim-stream",
        [
            "comfyui-sim",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp / "sim"),
            "--log-level",
            "warning",
        ],
        tmp,
        f"http://127.0.0.1:{port}/system_stats",
    ).start()
    try:
        name = "big_00001_.png"
        out = tmp / "sim" / "output"
        out.mkdir(parents=True, exist_ok=True)
        with open(out / name, "wb") as fh:
            for _ in range(size_mb):
                fh.write(os.urandom(1 << 20))
        spool = tmp / "spool"
        spool.mkdir()
        return asyncio.run(
            measure(coord.url, f"http://127.0.0.1:{port}", spool, size_mb, name, coord.pid)
        )
    finally:
        sim.kill()
        coord.stop()


if __name__ == "__main__":
    import sys
    import tempfile

    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory() as d:
        print(run(Path(d), mb))

"""Output bytes per second from an agent to object storage (presigned PUTs, multipart) and to
the coordinator's own disk (chunked PUTs), in the same run, on the same file.

Real processes: two coordinators (one with `output_store = s3://...`), and moto's S3-compatible
server on loopback; the agent's own upload code (`CoordinatorClient.upload`) for one leased job
each, from this process. "S3" includes the coordinator's completion: it reads the object back to
check its sha256 before the job may complete, as it checks a file on its own disk.

    .venv/bin/python -m bench.object_store [SIZE_MB]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from comfyfleet.agent.coordinator_client import CoordinatorClient
from comfyfleet.shared import protocol as p
from tests.helpers.protocol_agent import ProtocolAgent
from tests.helpers.s3 import BUCKET, start_s3


async def upload_once(url: str, path: Path, size: int, sha: str) -> tuple[float, bool]:
    """Seconds to upload `path` as one job's output, and whether the job then completed."""
    async with common.session() as s:
        agent = ProtocolAgent(s, url, "bench-agent")
        reg = await agent.register()
        async with s.post(f"{url}/v1/jobs", json={"workflow": common.tiny_workflow(1)}) as r:
            assert r.status == 201, await r.text()
        job = (await agent.lease(5.0)).jobs[0]
        await agent.started(job)
        client = CoordinatorClient(s, url, "bench-agent", 300.0)
        client.direct_uploads = reg.direct_uploads
        t0 = time.perf_counter()
        await client.upload(
            p.JobRef(job_id=job.job_id, attempt=job.attempt),
            "o.bin",
            path,
            size,
            sha,
            reg.chunk_size,
        )
        took = time.perf_counter() - t0
        ack = await agent.finish(job, outputs=[p.OutputFile(name="o.bin", size=size, sha256=sha)])
        return took, ack.status == "COMPLETED"


def run(tmp: Path, size_mb: int) -> dict[str, Any]:
    server = start_s3(tmp)
    os.environ.update(server.env())  # the coordinator processes' AWS credentials
    local = common.Coordinator(tmp / "local").start()
    bucket = common.Coordinator(
        tmp / "s3",
        [
            "--set", f"output_store=s3://{BUCKET}/bench",
            "--set", f"s3_endpoint_url={server.url}",
        ],
    ).start()  # fmt: skip
    try:
        path = tmp / "o.bin"
        data = os.urandom(size_mb << 20)
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        disk_s, disk_ok = asyncio.run(upload_once(local.url, path, len(data), sha))
        s3_s, s3_ok = asyncio.run(upload_once(bucket.url, path, len(data), sha))
        return {
            "size_mb": size_mb,
            "agent_to_coordinator_disk_mb_s": round(size_mb / disk_s, 1),
            "agent_to_object_storage_mb_s": round(size_mb / s3_s, 1),
            "completed": disk_ok and s3_ok,
            "part_size_mb": 16,
        }
    finally:
        local.stop()
        bucket.stop()
        server.stop()


if __name__ == "__main__":
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    with tempfile.TemporaryDirectory(prefix="cf-bench-s3-") as d:
        print(json.dumps(run(Path(d), mb), indent=2))

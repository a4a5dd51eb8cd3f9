"""Uploading an output straight to object storage, when the coordinator says `direct_uploads`:
ask the coordinator for a plan (the parts still missing, each with a presigned URL), PUT each
part to the bucket, then ask the coordinator to complete it (it reads the object back and checks
size and sha256). Any failure starts over from a fresh plan, which after a crash or a lost
connection names only what is still missing; so an agent killed in the middle of a multipart
upload resumes it after its restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from comfyfleet.shared import protocol as p

if TYPE_CHECKING:
    from comfyfleet.agent.coordinator_client import CoordinatorClient

AGAIN = 8  # a checksum mismatch or missing parts, this many times running, gives up
PARALLEL_PARTS = 4  # parts of one file in flight at once
PART_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=10)


async def upload_direct(
    client: CoordinatorClient, job: p.JobRef, name: str, path: Path, size: int, sha256: str
) -> None:
    from comfyfleet.agent.coordinator_client import (
        REPORT,
        CoordinatorUnavailable,
        Refused,
        _read_at,
    )

    url = f"jobs/{job.job_id}/outputs/{name}"  # under the coordinator in use at each try
    params = {"agent_id": client.agent_id, "attempt": str(job.attempt), "size": str(size)}

    async def put(part: p.UploadPart) -> None:
        data = await asyncio.to_thread(_read_at, path, part.offset, part.size)
        try:
            async with client.session.put(
                part.url,
                data=data,
                headers={"Content-Type": "application/octet-stream"},
                timeout=PART_TIMEOUT,
                ssl=client.ssl,
            ) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise CoordinatorUnavailable(f"object storage answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CoordinatorUnavailable(f"object storage: {type(exc).__name__}: {exc}") from exc

    async def step() -> p.UploadState:
        plan = await client._request("POST", f"{url}/plan", p.UploadPlan, params=params)
        if plan.complete:
            return p.UploadState(name=name, received=size, size=size, complete=True)
        gate = asyncio.Semaphore(PARALLEL_PARTS)

        async def gated(part: p.UploadPart) -> None:
            async with gate:
                await put(part)

        await asyncio.gather(*(gated(part) for part in plan.parts))
        return await client._request(
            "POST", f"{url}/complete", p.UploadState, params={**params, "sha256": sha256}
        )

    for again in range(AGAIN + 1):
        try:
            await REPORT.call(step, f"upload {name} to object storage")
            return
        except Refused as exc:
            bad_bytes = exc.error.get("field") == "sha256" or (
                exc.status == 409 and exc.error.get("field") in ("parts", "name")
            )
            if not bad_bytes or again == AGAIN:
                raise

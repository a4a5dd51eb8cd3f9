"""Whole-file SHA-256 of what is already on disk never runs on the event loop: not for a retried
PUT of a stored file, not to resume a part file after a restart, not to verify at finish.

Structural: every call of the hasher records whether it ran on a thread with a running event
loop (the coordinator's loop thread); none may.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from comfyfleet.coordinator import outputs
from comfyfleet.shared import protocol as p
from tests.api.conftest import MakeHarness

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def hash_threads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """True for each whole-file hash that ran on an event loop's thread."""
    on_loop: list[bool] = []
    real = outputs._sha256_of

    def spy(path: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(path)

    monkeypatch.setattr(outputs, "_sha256_of", spy)
    return on_loop


async def test_stored_and_part_files_are_hashed_off_the_event_loop(
    harness: MakeHarness, hash_threads: list[bool]
) -> None:
    h = await harness()
    agent, job = await h.running_job()
    data = bytes(range(256)) * 8192  # 2 MiB
    sha = hashlib.sha256(data).hexdigest()
    url = f"/agent/v1/jobs/{job.job_id}/outputs/o.png"
    base = {"agent_id": "a1", "attempt": "1", "size": str(len(data)), "sha256": sha}

    async def put(offset: int, end: int) -> dict[str, Any]:
        resp = await h.client.put(
            url, params={**base, "offset": str(offset)}, data=data[offset:end]
        )
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    half = len(data) // 2
    assert (await put(0, half))["complete"] is False
    h.coord.outputs.partial.clear()  # what a coordinator restart forgets: the running digest
    assert (await put(half, len(data)))["complete"] is True
    h.coord.outputs.verified.clear()  # ... and what it checked
    assert (await put(0, half))["complete"] is True  # a retried PUT of a stored file
    ack = await agent.finish(job, outputs=[p.OutputFile(name="o.png", size=len(data), sha256=sha)])
    assert ack.status == "COMPLETED"
    assert hash_threads and not any(hash_threads), hash_threads

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.coordinator.app import create_app
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.shared import protocol as p
from tests.helpers.protocol_agent import ProtocolAgent

WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


def fast_config(tmp_path: Path, **over: Any) -> CoordinatorConfig:
    base = CoordinatorConfig(
        data_dir=tmp_path / "coord",
        heartbeat_interval_s=0.5,
        lost_grace_s=0.5,
        restart_grace_s=1.0,
        assign_timeout_s=5.0,
        cancel_grace_s=5.0,
        lease_wait_s=2.0,
        sweep_interval_s=0.05,
    )
    return dataclasses.replace(base, **over)


class Harness:
    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def coord(self) -> Coordinator:
        return self.client.server.app[COORDINATOR]

    def agent(self, agent_id: str, **kw: Any) -> ProtocolAgent:
        base = str(self.client.make_url("/"))
        return ProtocolAgent(self.client.session, base, agent_id, **kw)

    async def submit(
        self, status: int = 201, headers: dict[str, str] | None = None, **body: Any
    ) -> dict[str, Any]:
        body.setdefault("workflow", WORKFLOW)
        resp = await self.client.post("/v1/jobs", json=body, headers=headers)
        data = await resp.json()
        assert resp.status == status, data
        return data

    async def job(self, job_id: str) -> dict[str, Any]:
        resp = await self.client.get(f"/v1/jobs/{job_id}")
        assert resp.status == 200
        return await resp.json()

    async def running_job(self, agent_id: str = "a1") -> tuple[ProtocolAgent, p.Assignment]:
        """A submitted job leased to a newly registered agent, which reports it started."""
        agent = self.agent(agent_id)
        await agent.register()
        await self.submit()
        job = (await agent.lease(2.0)).jobs[0]
        await agent.started(job)
        return agent, job


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
def harness(aiohttp_client: Any, tmp_path: Path) -> MakeHarness:
    async def make(**over: Any) -> Harness:
        client = await aiohttp_client(create_app(fast_config(tmp_path, **over)))
        return Harness(client)

    return make


@pytest.fixture
async def open_facade(aiohttp_client: Any, tmp_path: Path) -> Any:
    """The ComfyUI facade with no keys (tests/helpers/comfy_facade.py)."""
    from tests.helpers.comfy_facade import make

    return await make(aiohttp_client, tmp_path, keys=False)


@pytest.fixture
async def keyed(aiohttp_client: Any, tmp_path: Path) -> Any:
    """The ComfyUI facade with keys: tenants acme and beta, and agent gpu-1's token."""
    from tests.helpers.comfy_facade import make

    return await make(aiohttp_client, tmp_path, keys=True)

"""Several coordinators on one PostgreSQL store, as real processes with agents and simulated
ComfyUIs, jobs flowing, and the leader killed (SIGKILL), paused past its lease (SIGSTOP, then
SIGCONT) or cut from the database (pg_terminate_backend). Every accepted job ends exactly once
with its own outputs (tests/chaos/checker.py), and no move of a leader's epoch is written after
the next epoch began. Without PostgreSQL these fail."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.chaos.checker import check_run
from tests.helpers.fleet import txt2img
from tests.helpers.multi import (
    MultiFleet,
    evidence,
    fencing_violations,
    running_multi_fleet,
    terminate_backends_of,
    terms,
)
from tests.helpers.postgres import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(170)]

DONE = {"COMPLETED", "FAILED", "CANCELLED"}
SIZES = [(64, 64), (96, 64), (64, 96), (80, 80)]


@pytest.fixture
def store_url(pg_cluster: Cluster) -> Iterator[str]:
    schema = pg_cluster.new_schema()
    yield pg_cluster.url(search_path=schema)
    pg_cluster.drop_schemas([schema])


class Load:
    """Jobs submitted round-robin to every live coordinator (each with an idempotency key, and
    retried elsewhere when a coordinator does not answer)."""

    def __init__(self, fleet: MultiFleet, session: aiohttp.ClientSession) -> None:
        self.fleet = fleet
        self.s = session
        self.accepted: dict[str, tuple[int, int]] = {}
        self.turn = itertools.count()

    async def submit(self, n: int, tag: str) -> None:
        for i in range(n):
            size = SIZES[i % len(SIZES)]
            body = {"workflow": txt2img(*size, steps=10, prefix=f"{tag}{i}")}  # default retries
            key = f"{tag}-{i}"
            while True:
                url = self.fleet.urls[next(self.turn) % len(self.fleet.urls)]
                try:
                    async with self.s.post(
                        f"{url}/v1/jobs",
                        json=body,
                        headers={"Idempotency-Key": key},
                        timeout=aiohttp.ClientTimeout(total=5),
                    ) as r:
                        if r.status in (200, 201):
                            self.accepted[(await r.json())["id"]] = size
                            break
                        assert r.status in (429, 503), await r.text()
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)

    async def job(self, job_id: str) -> dict[str, Any] | None:
        for _ in range(50):
            url = self.fleet.urls[next(self.turn) % len(self.fleet.urls)]
            try:
                async with self.s.get(
                    f"{url}/v1/jobs/{job_id}", timeout=aiohttp.ClientTimeout(total=5)
                ) as r:
                    if r.status == 200:
                        data: dict[str, Any] = await r.json()
                        return data
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        return None

    async def settle(self, wait_s: float = 90.0) -> None:
        deadline = time.monotonic() + wait_s
        for job_id in self.accepted:
            while True:
                job = await self.job(job_id)
                if job is not None and job["status"] in DONE:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"job {job_id} did not end: {job}")
                await asyncio.sleep(0.2)

    async def verdict(self, store_url: str) -> tuple[Any, list[str], list[dict[str, Any]]]:
        found = await evidence(self.job, self.s, self.fleet, self.accepted)
        histories = {j: (ev.job or {}).get("history", []) for j, ev in found.items()}
        began = {e: at for e, _, _, at in terms(store_url)}
        return check_run(found), fencing_violations(histories, began), list(histories.values())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def sims(agents: int) -> dict[str, list[str]]:
    return {f"a{i}": ["--step-ms", "8000"] for i in range(agents)}


def assert_clean(verdict: Any, fencing: list[str]) -> None:
    assert verdict.violations == [], verdict.violations[:20]
    assert verdict.lost == 0 and verdict.duplicated == 0
    assert verdict.by_status == {"COMPLETED": verdict.accepted}, verdict.by_status
    assert fencing == [], fencing[:20]


async def test_sigkill_of_the_leader_of_two(
    tmp_path: Path, store_url: str, session: aiohttp.ClientSession
) -> None:
    with running_multi_fleet(tmp_path, store_url, 2, sims(2)) as fleet:
        load = Load(fleet, session)
        old = fleet.leader()
        await load.submit(8, "before")
        await asyncio.sleep(1.5)  # jobs running on both agents
        fleet.coords[old].kill(signal.SIGKILL)
        await load.submit(8, "during")  # the follower takes them while it is elected
        new = await asyncio.to_thread(fleet.leader, 30.0, old)
        fleet.start_coordinator(old)  # back, as a follower
        await load.submit(4, "after")
        await load.settle()
        assert fleet.leader() == new and (fleet.health(old) or {}).get("role") == "follower"
        verdict, fencing, histories = await load.verdict(store_url)
        assert_clean(verdict, fencing)
        epochs = [t[0] for t in terms(store_url)]
        assert epochs == sorted(epochs) and len(epochs) >= 2
        placed_by = {e["epoch"] for h in histories for e in h if e["event"] == "assign"}
        assert {epochs[0], epochs[-1]} <= placed_by  # both leaders placed jobs


async def test_sigstop_of_the_leader_past_its_lease(
    tmp_path: Path, store_url: str, session: aiohttp.ClientSession
) -> None:
    """The paused leader must find itself a follower on SIGCONT and write nothing more."""
    with running_multi_fleet(tmp_path, store_url, 3, sims(2)) as fleet:
        load = Load(fleet, session)
        old = fleet.leader()
        await load.submit(8, "before")
        await asyncio.sleep(1.5)
        paused_at = time.time()
        fleet.coords[old].signal(signal.SIGSTOP)
        submitting = asyncio.ensure_future(load.submit(8, "paused"))
        new = await asyncio.to_thread(fleet.leader, 30.0, old)  # within the lease and a poll
        await asyncio.sleep(max(0.0, 5.0 - (time.time() - paused_at)))  # 2.5 leases in all
        fleet.coords[old].signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(fleet.health, old) or {}).get("role") != "follower":
            assert time.monotonic() < deadline, fleet.health(old)
            await asyncio.sleep(0.1)
        await submitting
        await load.submit(4, "after")
        await load.settle()
        assert fleet.leader() == new
        verdict, fencing, _ = await load.verdict(store_url)
        assert_clean(verdict, fencing)
        old_epoch = max(t[0] for t in terms(store_url) if t[3] <= paused_at)
        stepped = [
            json.loads(line)
            for line in fleet.coords[old].log().splitlines()
            if '"leader_stepped_down"' in line
        ]
        assert [e["epoch"] for e in stepped] == [old_epoch], stepped


async def test_the_leaders_database_connections_killed(
    tmp_path: Path, store_url: str, pg_cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    with running_multi_fleet(tmp_path, store_url, 2, sims(2)) as fleet:
        load = Load(fleet, session)
        await load.submit(6, "before")
        killed = 0
        for round_ in range(3):
            await asyncio.sleep(1.0)
            pid = fleet.coords[fleet.leader()].proc.pid  # type: ignore[union-attr]
            killed += terminate_backends_of(pg_cluster, pid)
            await load.submit(4, f"r{round_}")
        assert killed >= 3
        await load.settle()
        verdict, fencing, _ = await load.verdict(store_url)
        assert_clean(verdict, fencing)

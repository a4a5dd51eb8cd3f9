"""Reports of several concurrent jobs travel together, as real processes on 127.0.0.1: one agent
runs four ComfyUIs (simulated) behind a proxy that holds each reports request 0.3 s (a slow
coordinator). While one request is held, the other jobs' started/events/finish reports wait and
go in the next one: the coordinator's histogram of reports per request shows requests of several,
and every job completes once."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers import procs
from tests.helpers.fleet import Api, Fleet, api_session, running_fleet, sim_stats, txt2img
from tests.integration.test_report_durability import outage, start_proxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
JOBS = 8


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path, ["--heartbeat-interval", "0.5"]) as f:
        yield f


@pytest.fixture
async def api(fleet: Fleet) -> AsyncIterator[Api]:
    async with api_session(fleet.url) as a:
        yield a


def histogram(metrics: str, name: str) -> dict[str, float]:
    out = {}
    for key, value in re.findall(
        rf"^{name}(_count|_sum|_bucket{{le=\"[^\"]+\"}}) (\S+)$", metrics, re.M
    ):
        out[key] = float(value)
    return out


async def test_reports_of_concurrent_jobs_travel_in_one_request(fleet: Fleet, api: Api) -> None:
    proxy_proc, proxy = start_proxy(fleet.tmp, fleet.url)
    try:
        sims = [fleet.add_sim(f"g{i}", 24576, "--step-ms", "30") for i in range(4)]
        fleet.agents["a"] = procs.Proc(
            "agent-a",
            ["agent", "--coordinator", proxy, "--agent-id", "a", "--stall", "1"]
            + ["--data-dir", str(fleet.tmp / "agent-a")]
            + [arg for url in sims for arg in ("--comfyui", url)],
            fleet.tmp,
            f"{fleet.url}/v1/agents/a",
        ).start(wait=False)
        await api.agents_online({"a"})
        outage(proxy, seconds="600", delay="0.3", only="reports")
        ids = [
            (await api.submit(txt2img(512, 512, steps=10, prefix=f"b{i}")))["id"]
            for i in range(JOBS)
        ]
        done = [await api.wait(i, {"COMPLETED", "FAILED", "CANCELLED"}, 60) for i in ids]
        assert [d["status"] for d in done] == ["COMPLETED"] * JOBS, done
        assert [d["attempt"] for d in done] == [1] * JOBS
        assert sum(sim_stats(url)["prompts_submitted"] for url in sims) == JOBS
        async with api.s.get(f"{fleet.url}/metrics") as resp:
            sizes = histogram(await resp.text(), "comfyfleet_agent_report_batch_size")
        # every job's started and finish came in reports requests, with the progress events
        assert sizes["_sum"] >= 2 * JOBS, sizes
        alone = sizes['_bucket{le="1.0"}']
        assert sizes["_count"] > alone, sizes  # some request carried several reports
        assert sizes["_sum"] / sizes["_count"] > 1.5, sizes
    finally:
        if proxy_proc.poll() is None:
            proxy_proc.kill()
            proxy_proc.wait(10)

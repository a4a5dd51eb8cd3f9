"""A finished job's result survives the coordinator being away, as real processes on 127.0.0.1:
the agent keeps its outputs and finish report (the spool is its outbox) and sends them until the
coordinator acknowledges them, however long that takes and across its own restart.

- coordinator SIGKILLed while the job runs, down OUTAGE_S, started again on the same data dir;
- coordinator answering every agent request with a real 503 + Retry-After for OUTAGE_S (a proxy
  process in front of it, as a coordinator whose store fails answers);
- both the coordinator and the agent killed after the job ended; the restarted agent sends the
  report it kept.

In each the job completes at attempt 1 with its outputs, and ComfyUI ran the prompt once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.agent.outbox import REPORT_FILE
from tests.helpers import procs
from tests.helpers.fleet import Api, Fleet, api_session, running_fleet, sim_stats, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
# 25 s: more than twice the ~11 s after which the old agent gave its report up (issue 12.2);
# COMFYFLEET_OUTAGE_S=60 runs the outages the closing note of issue 12 measured
OUTAGE_S = float(os.environ.get("COMFYFLEET_OUTAGE_S", "25"))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    # heartbeats every 0.5 s; an agent silent for 90 s is lost (the 503 outage is shorter, and
    # a coordinator that hears nothing from an agent for longer rightly requeues its jobs)
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--set", "lost_grace_s=90"]
    with running_fleet(tmp_path, args) as f:
        yield f


@pytest.fixture
async def api(fleet: Fleet) -> AsyncIterator[Api]:
    async with api_session(fleet.url) as a:
        yield a


async def run_job_until_running(fleet: Fleet, api: Api, sim: str) -> dict[str, Any]:
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=30, prefix="durable"))
    await api.wait(job["id"], {"RUNNING"})
    return job


async def completed_once(fleet: Fleet, api: Api, job_id: str, sim_url: str) -> None:
    done = await api.wait(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, wait_s=60)
    assert done["status"] == "COMPLETED", done
    assert done["attempt"] == 1 and done["retries_used"] == 0, done
    assert [o["original"] for o in done["outputs"]] == ["durable_00001_.png"]
    assert await api.image_size(done["outputs"][0]) == (512, 512)
    assert sim_stats(sim_url)["prompts_submitted"] == 1
    assert not list((fleet.tmp / "agent-a" / "spool").iterdir())  # acknowledged: gone


async def test_coordinator_sigkilled_long_loses_no_result(fleet: Fleet, api: Api) -> None:
    sim = fleet.add_sim("a", 24576, "--step-ms", "100")
    fleet.add_agent("a", "a")
    job = await run_job_until_running(fleet, api, sim)
    fleet.coord.kill(signal.SIGKILL)
    await asyncio.sleep(OUTAGE_S)  # the job ends on the agent meanwhile
    assert list((fleet.tmp / "agent-a" / "spool").glob(f"*/{REPORT_FILE}"))  # kept, unsent
    fleet.start_coordinator()  # same port, same data dir
    await completed_once(fleet, api, job["id"], sim)
    assert fleet.agents["a"].alive


def start_proxy(tmp: Path, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    port = procs.free_port()
    log = open(tmp / "proxy.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.outage_proxy", "--port", str(port)]
        + ["--upstream", upstream],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{url}/__outage", proc=proc)
    return proc, url


def outage(proxy: str, **query: str) -> dict[str, Any]:
    method = "POST" if query else "GET"
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    req = urllib.request.Request(f"{proxy}/__outage?{qs}", method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return dict(json.loads(resp.read()))


async def test_coordinator_answering_503_long_loses_no_result(fleet: Fleet, api: Api) -> None:
    proxy_proc, proxy = start_proxy(fleet.tmp, fleet.url)
    try:
        sim = fleet.add_sim("a", 24576, "--step-ms", "100")
        fleet.agents["a"] = procs.Proc(
            "agent-a",
            ["agent", "--coordinator", proxy, "--comfyui", sim, "--agent-id", "a"]
            + ["--data-dir", str(fleet.tmp / "agent-a"), "--stall", "1"],
            fleet.tmp,
            f"{fleet.url}/v1/agents/a",
        ).start(wait=False)
        job = await run_job_until_running(fleet, api, sim)
        outage(proxy, seconds=f"{OUTAGE_S:g}", retry_after="5")
        await asyncio.sleep(OUTAGE_S)
        served = outage(proxy)["served_503"]
        # the agent went on asking, Retry-After apart, for its report and its other calls
        assert served.get("finish", 0) + served.get("jobs", 0) >= 3, served
        assert served.get("heartbeat", 0) >= 3, served
        await completed_once(fleet, api, job["id"], sim)
    finally:
        if proxy_proc.poll() is None:
            proxy_proc.kill()
            proxy_proc.wait(10)


async def test_agent_restart_sends_the_report_it_kept(fleet: Fleet, api: Api) -> None:
    sim = fleet.add_sim("a", 24576, "--step-ms", "100")
    fleet.add_agent("a", "a")
    job = await run_job_until_running(fleet, api, sim)
    fleet.coord.kill(signal.SIGKILL)
    spool = fleet.tmp / "agent-a" / "spool"
    for _ in range(600):  # the job ends on the agent; its report is kept
        if list(spool.glob(f"*/{REPORT_FILE}")):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no report kept in the spool")
    fleet.agents["a"].kill(signal.SIGKILL)
    fleet.start_coordinator()
    fleet.add_agent("a", "a")  # same id, same data dir: finds its outbox
    await completed_once(fleet, api, job["id"], sim)

"""Healing managed ComfyUIs: how fast a crashed instance takes jobs again, and what supervising
costs the agent.

1. Start time of the simulator alone (spawn -> /system_stats answers), the floor of any restart.
2. Crash -> taking jobs: an agent in process mode runs the simulator; each round SIGKILLs it and
   submits a job at once; measured: the restart's detection (its event time), the instance
   ready again (its up_since), and the job RUNNING (coordinator's timestamp). Reported with the
   simulator's start time subtracted.
3. The agent's own CPU and RSS while supervising 1 and N idle instances (per instance: the
   difference divided by N - 1).

python -m bench.healing [--rounds 10] [--instances 4] [--idle-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import common
from tests.helpers import procs
from tests.helpers.fleet import Fleet
from tests.helpers.managed import add_managed_agent, instance_record, kill_managed, sim_command


def sim_start_s(tmp: Path, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        port = procs.free_port()
        p = procs.Proc(
            f"sim-start-{i}",
            ["comfyui-sim", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "s")],
            tmp,
            f"http://127.0.0.1:{port}/system_stats",
        )
        t0 = time.monotonic()
        p.start(wait=True)
        times.append(time.monotonic() - t0)
        p.kill(signal.SIGKILL)
    return times


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_for(pred: Any, timeout: float = 60.0, every: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(every)


def instance_info(fleet: Fleet, name: str) -> dict[str, Any]:
    try:
        agent = get(f"{fleet.url}/v1/agents/{name}")
    except urllib.error.HTTPError:  # not registered yet
        return {}
    return dict(agent["instances"][0]) if agent.get("instances") else {}


def completed(url: str, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = get(f"{url}/v1/jobs/{job_id}")
    return job if job["status"] == "COMPLETED" else None


def crash_rounds(tmp: Path, rounds: int, heartbeat_s: float) -> list[dict[str, float]]:
    fleet = Fleet(tmp, ["--heartbeat-interval", str(heartbeat_s), "--log-level", "warning"])
    fleet.start_coordinator()
    out = []
    try:
        add_managed_agent(fleet, "h", sim_command(tmp, "h"), "--log-level", "warning")
        ready = lambda: instance_info(fleet, "h").get("healthy")  # noqa: E731
        for _ in range(rounds):
            wait_for(ready)
            time.sleep(12)  # past the policy's stable_s: a crash, not a failed start
            rec = instance_record(fleet, "h")
            assert rec is not None
            t0 = time.time()
            os.kill(int(rec["pid"]), signal.SIGKILL)
            body = json.dumps({"workflow": common.tiny_workflow(int(t0 * 1000))}).encode()
            req = urllib.request.Request(
                f"{fleet.url}/v1/jobs", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                job_id = json.loads(r.read())["id"]
            info = wait_for(
                lambda since=t0: (
                    (i := instance_info(fleet, "h")).get("healthy")
                    and (i.get("up_since") or 0) > since
                    and i
                )
            )
            seen_healthy = time.time()
            job = wait_for(lambda jid=job_id: completed(fleet.url, jid))
            out.append(
                {
                    "detected_s": info["restarts"][-1]["at"] - t0,
                    "ready_s": info["up_since"] - t0,
                    "coordinator_sees_ready_s": seen_healthy - t0,
                    "job_running_s": job["timestamps"]["RUNNING"] - t0,
                }
            )
    finally:
        fleet.stop()
        kill_managed(tmp)
    return out


async def idle_cost(tmp: Path, instances: int, idle_s: float) -> dict[str, float]:
    fleet = Fleet(tmp, ["--log-level", "warning"])
    fleet.start_coordinator()
    try:
        agent = add_managed_agent(
            fleet,
            "c",
            sim_command(tmp, "c"),
            "--comfyui-count",
            str(instances),
            "--log-level",
            "warning",
        )

        def all_ready() -> bool:
            try:
                found = get(f"{fleet.url}/v1/agents/c").get("instances") or []
            except urllib.error.HTTPError:  # not registered yet
                return False
            return len(found) == instances and all(i["healthy"] for i in found)

        wait_for(all_ready, timeout=120, every=0.2)
        await asyncio.sleep(3)
        assert agent.proc is not None
        with common.Sampler(agent.proc.pid) as sampler:
            await asyncio.sleep(idle_s)
        summary = sampler.summary()
        summary["rss_mb"] = round(sampler.rss() / 2**20, 1)
        return summary
    finally:
        fleet.stop()
        kill_managed(tmp)


def stats(values: list[float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in common.percentiles(values, (50, 95)).items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--heartbeat-s", type=float, default=0.5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-healing-") as d:
        tmp = Path(d)
        start = sim_start_s(tmp, args.rounds)
        (tmp / "crash").mkdir()
        crash = crash_rounds(tmp / "crash", args.rounds, args.heartbeat_s)
        costs = {}
        for n in (1, args.instances):
            (tmp / f"idle{n}").mkdir()
            costs[n] = asyncio.run(idle_cost(tmp / f"idle{n}", n, args.idle_s))
    sim_p50 = statistics.median(start)
    one, many = costs[1], costs[args.instances]
    per = max(1, args.instances - 1)
    result = {
        "sim_start_s": stats(start),
        "heartbeat_interval_s": args.heartbeat_s,
        "crash_detected_s": stats([c["detected_s"] for c in crash]),
        "crash_to_ready_s": stats([c["ready_s"] for c in crash]),
        "crash_to_coordinator_sees_ready_s": stats([c["coordinator_sees_ready_s"] for c in crash]),
        "crash_to_ready_minus_sim_start_s": stats([c["ready_s"] - sim_p50 for c in crash]),
        "job_submitted_at_crash_running_s": stats([c["job_running_s"] for c in crash]),
        "agent_idle": {str(k): v for k, v in costs.items()},
        "agent_per_instance": {
            "cpu_pct": round((many["cpu_pct"] - one["cpu_pct"]) / per, 2),
            "rss_mb": round((many["rss_mb"] - one["rss_mb"]) / per, 2),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

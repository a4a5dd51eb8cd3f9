"""Healing scenarios run against each kind of managed instance (process, docker).

A `Harness` starts an agent whose ComfyUI is the simulator, and knows how to crash (SIGKILL),
freeze (HTTP silent) and identify the running instance; the scenarios are the same for both.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Protocol

from tests.helpers.fleet import Api, Fleet, sim_faults, txt2img
from tests.helpers.managed import ENDED, fleet_events, instance, metrics, wait_instance


class Harness(Protocol):
    fleet: Fleet

    def start_agent(self, name: str, *agent_args: str, sim_args: tuple[str, ...] = ()) -> None:
        """An agent `name` whose one managed instance runs the simulator with `sim_args`."""

    def script_dir(self) -> Path:
        """Where a start script must be for the instance to run it."""

    def start_agent_with_script(self, name: str, script: Path, *agent_args: str) -> None:
        """An agent whose instance's command is `sh script PORT` (script in script_dir())."""

    def sim_line(self, *sim_args: str) -> str:
        """The shell line that runs the simulator on port $1 (for scripts)."""

    def kill_instance(self, name: str) -> None: ...
    def freeze_instance(self, name: str) -> None: ...
    def instance_token(self, name: str) -> str:
        """What tells one started instance from the next (pid, container id)."""

    def kill_agent(self, name: str) -> None: ...
    def restart_agent(self, name: str) -> None: ...


SLOW = ("--step-ms", "250")


def write(path: Path, text: str) -> None:
    path.write_text(text)


async def job_history(api: Api, job_id: str) -> str:
    return " | ".join(t["reason"] for t in (await api.job(job_id))["history"])


async def crash_mid_job(h: Harness, api: Api) -> None:
    """SIGKILL mid-job: restarted (reason exited), the job completes without spending a retry;
    the restart is on the fleet stream, in /metrics and in the agent's instance view."""
    h.start_agent("a", sim_args=SLOW)
    await api.agents_online({"a"})
    first = h.instance_token("a")
    async with fleet_events(h.fleet.url) as events:
        job = await api.submit(txt2img(512, 512, steps=8), max_retries=0)
        await api.wait(job["id"], {"RUNNING"})
        await asyncio.sleep(0.5)
        h.kill_instance("a")
        done = await api.wait(job["id"], ENDED, wait_s=60)
        assert done["status"] == "COMPLETED", done
        assert done["retries_used"] == 0 and done["attempt"] == 2, done
        assert "ComfyUI restarted (exited" in await job_history(api, job["id"])
        info = await wait_instance(api, "a", "ready", lambda i: i["state"] == "ready")
        restarted = [e["data"] for e in events if e["kind"] == "comfyui_restarted"]
    assert info["restart_counts"] == {"exited": 1}, info
    assert info["last_restart_reason"] == "exited" and info["up_since"], info
    assert h.instance_token("a") != first
    assert [(r["agent_id"], r["reason"], r["job_id"]) for r in restarted] == [
        ("a", "exited", job["id"])
    ], restarted
    assert re.search(
        r'comfyfleet_comfyui_restarts_total\{agent_id="a",instance="0",reason="exited"\} 1\.0',
        await metrics(api),
    )


async def hung_prompt(h: Harness, api: Api) -> None:
    """A prompt ComfyUI lists as running sends no event for stall_s: restarted (hung_prompt)."""
    h.start_agent("a", "--set", "heal_stall_s=2", sim_args=SLOW)
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=8))
    await api.wait(job["id"], {"RUNNING"})
    sim_faults(h.fleet.sim_urls["a"], hang=True)
    done = await api.wait(job["id"], ENDED, wait_s=60)
    assert done["status"] == "COMPLETED" and done["retries_used"] == 0, done
    info = await instance(api, "a")
    assert info["restart_counts"] == {"hung_prompt": 1}, info
    assert "hung_prompt" in await job_history(api, job["id"])


async def http_silent(h: Harness, api: Api) -> None:
    """ComfyUI stops answering HTTP (frozen): restarted (hung_http), the job completes."""
    h.start_agent("a", sim_args=SLOW)
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=8))
    await api.wait(job["id"], {"RUNNING"})
    h.freeze_instance("a")
    done = await api.wait(job["id"], ENDED, wait_s=60)
    assert done["status"] == "COMPLETED" and done["retries_used"] == 0, done
    info = await instance(api, "a")
    assert info["restart_counts"] == {"hung_http": 1}, info


async def ws_silent(h: Harness, api: Api) -> None:
    """The WebSocket stays open but silent while prompts finish (ComfyUI #15240): the job
    completes through /history, then the instance is restarted between jobs (ws_silent)."""
    h.start_agent("a")
    await api.agents_online({"a"})
    sim_faults(h.fleet.sim_urls["a"], ws_silent=True)
    job = await api.submit(txt2img(64, 64, steps=2))
    done = await api.wait(job["id"], ENDED, wait_s=40)
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
    info = await wait_instance(
        api, "a", "restarted for ws_silent", lambda i: i["restart_counts"].get("ws_silent") == 1
    )
    assert info["restart_counts"] == {"ws_silent": 1}, info
    info = await wait_instance(api, "a", "ready", lambda i: i["state"] == "ready")
    again = await api.submit(txt2img(64, 64, steps=2))
    assert (await api.wait(again["id"], ENDED, wait_s=40))["status"] == "COMPLETED"
    assert (await instance(api, "a"))["restart_counts"] == {"ws_silent": 1}


async def leak(h: Harness, api: Api) -> None:
    """Idle VRAM that POST /free does not release: restarted between jobs (leak_vram); no job
    is caught. Normal model residency (freed by POST /free) restarts nothing."""
    h.start_agent("a", "--set", "heal_leak_vram_mb=4000")
    await api.agents_online({"a"})
    first = await api.submit(txt2img(64, 64, steps=2))  # SDXL: 6600 MB resident afterwards
    assert (await api.wait(first["id"], ENDED, wait_s=40))["status"] == "COMPLETED"
    await asyncio.sleep(3)  # the leak check ran: /free cured it
    assert (await instance(api, "a"))["restart_counts"] == {}
    sim_faults(h.fleet.sim_urls["a"], leak_vram_mb=5000)
    second = await api.submit(txt2img(64, 64, steps=2))
    done = await api.wait(second["id"], ENDED, wait_s=40)
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
    info = await wait_instance(
        api, "a", "restarted for the leak", lambda i: i["restart_counts"].get("leak_vram") == 1
    )
    assert (
        info["restarts"][-1]["reason"] == "leak_vram"
        and "5000 MB" in info["restarts"][-1]["detail"]
    ), info
    await wait_instance(api, "a", "ready", lambda i: i["state"] == "ready")
    third = await api.submit(txt2img(64, 64, steps=2))
    done = await api.wait(third["id"], ENDED, wait_s=40)
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done


async def crash_loop(h: Harness, api: Api, script: Path) -> None:
    """A command that exits at once: restarts back off, the instance turns unhealthy, and it is
    healthy again once the command is fixed. Broken again later, jobs wait for it meanwhile."""
    broken = "echo 'ComfyUI: cannot import torch' >&2\nexit 3\n"
    write(script, broken)
    h.start_agent_with_script(
        "a", script, "--set", "backoff_base_s=0.3", "--set", "unhealthy_after_starts=3"
    )
    info = await wait_instance(api, "a", "unhealthy", lambda i: i["state"] == "unhealthy", 60)
    assert not info["healthy"] and info["restart_counts"].get("start_failed", 0) >= 2, info
    assert "exit code 3; log: ComfyUI: cannot import torch" in info["restarts"][-1]["detail"]
    write(script, f"exec {h.sim_line()}\n")
    info = await wait_instance(api, "a", "healthy again", lambda i: i["healthy"], 60)
    assert info["state"] == "ready", info
    first = await api.submit(txt2img(64, 64, steps=2))
    assert (await api.wait(first["id"], ENDED, wait_s=40))["status"] == "COMPLETED"
    write(script, broken)  # a bad update, then the instance dies: it cannot come back
    h.kill_instance("a")
    await wait_instance(api, "a", "unhealthy again", lambda i: i["state"] == "unhealthy", 60)
    job = await api.submit(txt2img(64, 64, steps=2))
    await asyncio.sleep(1.0)
    waiting = await api.job(job["id"])
    assert waiting["status"] == "QUEUED" and waiting["pending_reason"], waiting
    write(script, f"exec {h.sim_line()}\n")
    await wait_instance(api, "a", "healthy once more", lambda i: i["healthy"], 60)
    done = await api.wait(job["id"], ENDED, wait_s=40)
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done


async def agent_restart_adopts(h: Harness, api: Api) -> None:
    """Agent SIGKILLed mid-job and started again: it adopts the running ComfyUI (same
    instance, no restart) and the job completes."""
    h.start_agent("a", sim_args=SLOW)
    await api.agents_online({"a"})
    token = h.instance_token("a")
    job = await api.submit(txt2img(512, 512, steps=8))
    await api.wait(job["id"], {"RUNNING"})
    h.kill_agent("a")
    h.restart_agent("a")
    done = await api.wait(job["id"], ENDED, wait_s=60)
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
    assert h.instance_token("a") == token
    info = await instance(api, "a")
    assert info["restart_counts"] == {} and info["state"] == "ready", info


async def breaks_twice_fails(h: Harness, api: Api) -> None:
    """A job that crashes ComfyUI every time: requeued free once, then FAILED with the reason,
    and the (agent, shape) pair counts a failure (blocked at once with threshold 1)."""
    h.start_agent("a", sim_args=("--step-ms", "200", "--crash-after-s", "0.3"))
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=8), max_retries=3)
    done = await api.wait(job["id"], ENDED, wait_s=60)
    assert done["status"] == "FAILED", done
    assert done["error"]["code"] == "comfyui_broken", done
    assert "crashed ComfyUI 2 times" in done["error"]["message"], done
    assert done["retries_used"] == 0 and done["attempt"] == 2, done
    async with api.s.get(f"{h.fleet.url}/v1/agents/a") as r:
        agent = await r.json()
    assert len(agent["blocked_workflows"]) == 1, agent

"""ProcessRuntime with small real processes: own process group, log file, exit detail, adoption
by pid + start time + fingerprint, and replacing a process started with other settings."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil
import pytest

from comfyfleet.agent.supervise.logfile import LogFile
from comfyfleet.agent.supervise.process import ProcessRuntime, exit_detail
from comfyfleet.agent.supervise.spec import InstanceSpec

pytestmark = pytest.mark.timeout(30)


def spec(script: str, gpu: int | None = 3) -> InstanceSpec:
    return InstanceSpec(
        "0", "process", "http://127.0.0.1:1", port=1, gpu=gpu, command=("sh", "-c", script)
    )


def runtime(tmp: Path, s: InstanceSpec) -> ProcessRuntime:
    return ProcessRuntime(s, tmp / "run", LogFile(tmp / "c.log", 1 << 20, 1), stop_grace_s=2)


async def wait_exit(rt: ProcessRuntime) -> str:
    for _ in range(200):
        detail = await rt.poll()
        if detail is not None:
            return detail
        await asyncio.sleep(0.02)
    raise AssertionError("did not exit")


async def test_child_runs_in_its_own_group_with_its_gpu_and_logs_to_the_file(
    tmp_path: Path,
) -> None:
    rt = runtime(tmp_path, spec('echo "gpu=$CUDA_VISIBLE_DEVICES"; echo oops >&2; exit 3'))
    await rt.start()
    assert rt.proc is not None and os.getpgid(rt.proc.pid) == rt.proc.pid != os.getpgid(0)
    assert await wait_exit(rt) == "exit code 3"
    tail = await rt.log_tail()
    assert "gpu=3" in tail and tail.rstrip().endswith("oops")


async def test_stop_ends_the_whole_group_and_a_hard_stop_kills_at_once(tmp_path: Path) -> None:
    rt = runtime(tmp_path, spec("sleep 30 & sleep 30; wait"))
    await rt.start()
    assert rt.proc is not None
    await asyncio.sleep(0.2)
    group = [rt.proc, *rt.proc.children(recursive=True)]
    assert len(group) >= 2
    await rt.stop(hard=True)
    gone, alive = psutil.wait_procs(group, timeout=5)
    assert not alive and rt.proc is None
    assert not (tmp_path / "run" / "instance-0.json").exists()


async def test_a_restarted_agent_adopts_its_process_and_replaces_one_with_other_settings(
    tmp_path: Path,
) -> None:
    first = runtime(tmp_path, spec("sleep 30"))
    await first.start()
    assert first.proc is not None
    pid = first.proc.pid
    again = runtime(tmp_path, spec("sleep 30"))  # the agent after a SIGKILL: same settings
    assert await again.adopt() and again.proc is not None and again.proc.pid == pid
    assert await again.poll() is None
    changed = runtime(tmp_path, spec("sleep 31"))
    assert not await changed.adopt()
    assert "exit" in await wait_exit(again)  # the old one is gone, no second copy stays
    assert not await runtime(tmp_path, spec("sleep 30")).adopt()  # nothing left to adopt
    if first.child is not None:
        first.child.wait(5)


async def test_a_command_that_cannot_start_is_a_failed_start(tmp_path: Path) -> None:
    s = InstanceSpec("0", "process", "http://x:1", port=1, command=(str(tmp_path / "nope"),))
    rt = runtime(tmp_path, s)
    await rt.start()
    assert (await rt.poll() or "").startswith("could not be started")
    assert "cannot start" in await rt.log_tail()


def test_exit_details() -> None:
    assert exit_detail(0) == "exit code 0"
    assert exit_detail(-signal.SIGKILL) == "killed by SIGKILL"

"""A ComfyUI the agent runs as a child process: own process group, one GPU, log in a file.

A small record (`<run_dir>/instance-<id>.json`: pid, its start time, the spec's fingerprint)
lets an agent that was killed and started again adopt the ComfyUI still running instead of
starting a second copy on the same port. The start time guards against a recycled pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import structlog

from comfyfleet.agent.supervise.logfile import LogFile
from comfyfleet.agent.supervise.spec import InstanceSpec

log = structlog.get_logger("agent.instances")


def exit_detail(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by {name}"
    return f"exit code {returncode}"


class ProcessRuntime:
    kind = "process"

    def __init__(
        self, spec: InstanceSpec, run_dir: Path, logfile: LogFile, stop_grace_s: float = 10.0
    ) -> None:
        self.spec = spec
        self.record_path = run_dir / f"instance-{spec.instance_id}.json"
        self.logfile = logfile
        self.stop_grace_s = stop_grace_s
        self.child: subprocess.Popen[bytes] | None = None
        self.proc: psutil.Process | None = None  # the group leader (ours or adopted)

    @property
    def describe(self) -> str:
        return f"pid {self.proc.pid}" if self.proc is not None else "not running"

    def limits(self) -> tuple[int, float] | None:
        return None

    async def adopt(self) -> bool:
        try:
            rec = json.loads(self.record_path.read_text())
            proc = psutil.Process(int(rec["pid"]))
            ours = abs(proc.create_time() - float(rec["create_time"])) < 0.01
            alive = proc.status() != psutil.STATUS_ZOMBIE
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            return False
        if not (ours and alive and rec.get("fingerprint") == self.spec.fingerprint()):
            log.info("instance_not_adopted", instance=self.spec.instance_id, pid=proc.pid)
            if ours and alive:
                _killpg(proc.pid, signal.SIGKILL)  # ours, started with other settings: replaced
            return False
        self.proc = proc
        log.info("instance_adopted", instance=self.spec.instance_id, pid=proc.pid)
        return True

    async def start(self) -> None:
        env = dict(os.environ)
        if self.spec.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.spec.gpu)
        env.setdefault("PYTHONUNBUFFERED", "1")
        fd = self.logfile.open_for_child()
        try:
            os.write(fd, f"\n=== {time.strftime('%F %T')} comfyfleet starts ComfyUI\n".encode())
            self.child = await asyncio.to_thread(
                subprocess.Popen,
                list(self.spec.command),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: stopped as a whole
            )
        except OSError as exc:
            os.write(fd, f"cannot start {self.spec.command[0]!r}: {exc}\n".encode())
            self.child, self.proc = None, None
            return
        finally:
            os.close(fd)
        self.proc = psutil.Process(self.child.pid)
        record = {
            "pid": self.child.pid,
            "create_time": self.proc.create_time(),
            "fingerprint": self.spec.fingerprint(),
            "argv": list(self.spec.command),
        }
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.record_path)
        log.info("instance_started", instance=self.spec.instance_id, pid=self.child.pid)

    async def poll(self) -> str | None:
        if self.child is not None:
            code = self.child.poll()
            return None if code is None else exit_detail(code)
        if self.proc is None:
            return "could not be started"
        try:  # adopted: not our child, no exit code to read
            if self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            pass
        return "exited (adopted process; exit code unknown)"

    async def stop(self, hard: bool = False) -> None:
        """SIGTERM the group (SIGCONT too: a stopped process must see it), SIGKILL after the
        grace; `hard` (a crashed or hung ComfyUI): SIGKILL at once."""
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid
        if not hard:
            for sig in (signal.SIGTERM, signal.SIGCONT):
                _killpg(pgid, sig)
            for _ in range(max(1, int(self.stop_grace_s / 0.05))):
                if await self.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        _killpg(pgid, signal.SIGKILL)  # whatever is left of the group
        if self.child is not None:
            await asyncio.to_thread(self.child.wait)
        self.child, self.proc = None, None
        self.record_path.unlink(missing_ok=True)

    async def ram_mb(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        return await asyncio.to_thread(_tree_rss_mb, proc)

    async def log_tail(self) -> str:
        return await asyncio.to_thread(self.logfile.tail)

    async def housekeeping(self) -> None:
        await asyncio.to_thread(self.logfile.rotate_if_needed)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tree_rss_mb(proc: psutil.Process) -> int | None:
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total >> 20

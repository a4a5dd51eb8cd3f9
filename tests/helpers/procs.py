"""Real processes on 127.0.0.1 with free ports, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class Proc:
    """A comfyfleet subcommand in its own process group, its log in a file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, health: str) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.health = health
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "comfyfleet", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        if wait:
            wait_http(self.health, proc=self.proc)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def coordinator(
    data_dir: Path, log_dir: Path, port: int | None = None, extra: list[str] | None = None
) -> Proc:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        "coordinator",
        [
            "coordinator",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            *(extra or []),
        ],
        log_dir,
        f"{url}/healthz",
    )
    proc.url = url  # type: ignore[attr-defined]
    return proc

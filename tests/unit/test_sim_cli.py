"""`comfyui-sim` command line: flags, the one stdout line, and real process faults."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyfleet.sim.cli import add_subcommand, config_from_args, main, parse_listen

LINE = re.compile(r"^comfyui-sim listening on http://127\.0\.0\.1:(\d+)$")
PROMPT = {
    "1": {"class_type": "EmptyImage",
          "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 3}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cli"}},
}  # fmt: skip


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("0.0.0.0:8188") == ("0.0.0.0", 8188)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":7000") == ("127.0.0.1", 7000)
    assert parse_listen("7001") == ("127.0.0.1", 7001)
    for bad in ("host:port", "1.2.3.4:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_listen(bad)


def test_subcommand_flags_become_config(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="comfyfleet")
    add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "comfyui-sim", "--listen", "0.0.0.0:9100", "--vram-mb", "8192", "--gpu-name", "Test GPU",
        "--device", "cpu", "--data-dir", str(tmp_path), "--step-ms", "7", "--node-ms", "1",
        "--crash-after-s", "3", "--crash-on-prompt", "2", "--hang", "--drop-ws-after-s", "1.5",
        "--oom-node-class", "KSampler", "--oom-probability", "0.1",
        "--fail-class-type", "VAEDecode", "--slow-start-s", "0.5",
    ])  # fmt: skip
    assert callable(args.func)
    config = config_from_args(args)
    assert (config.host, config.port, config.vram_mb, config.gpu_name, config.device) == (
        "0.0.0.0", 9100, 8192, "Test GPU", "cpu",
    )  # fmt: skip
    assert config.output_dir == tmp_path / "output" and config.input_dir == tmp_path / "input"
    assert (config.step_ms, config.node_ms) == (7.0, 1.0)
    f = config.faults
    assert (f.crash_after_s, f.crash_on_prompt, f.hang, f.drop_ws_after_s) == (3.0, 2, True, 1.5)
    assert (f.oom_node_class, f.oom_probability, f.fail_class_type, f.slow_start_s) == (
        "KSampler", 0.1, "VAEDecode", 0.5,
    )  # fmt: skip


def test_bad_flags_exit_with_usage() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--device", "tpu"])
    assert exc.value.code == 2


async def start(tmp_path: Path, *flags: str) -> tuple[asyncio.subprocess.Process, str, float]:
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfyfleet.sim.cli", "--listen", "127.0.0.1:0",
        "--data-dir", str(tmp_path), "--step-ms", "2", "--node-ms", "0.5", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().rstrip("\n")
    match = LINE.match(line)
    assert match, line
    return proc, f"http://127.0.0.1:{match.group(1)}", time.monotonic() - began


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, bytes, bytes]:
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, stdout, stderr


async def submit(session: aiohttp.ClientSession, base: str) -> str:
    async with session.post(f"{base}/prompt", json={"prompt": PROMPT}) as resp:
        assert resp.status == 200
        return (await resp.json())["prompt_id"]


async def test_process_prints_one_line_and_serves(tmp_path: Path) -> None:
    proc, base, _ = await start(tmp_path, "--device", "cpu")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api/system_stats") as resp:
                stats = await resp.json()
            assert stats["devices"][0]["type"] == "cpu"
            pid = await submit(session, base)
            history: dict[str, Any] = {}
            for _ in range(200):
                async with session.get(f"{base}/history/{pid}") as resp:
                    history = await resp.json()
                if history:
                    break
                await asyncio.sleep(0.02)
            assert history[pid]["status"]["status_str"] == "success"
        assert (tmp_path / "output" / "cli_00001_.png").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
    code, stdout, stderr = await finish(proc)
    assert code == 0
    assert stdout == b""  # the listening line was the only stdout output
    assert b"sim.listening" in stderr


async def test_crash_on_prompt_kills_the_process(tmp_path: Path) -> None:
    proc, base, _ = await start(tmp_path, "--crash-on-prompt", "1")
    async with aiohttp.ClientSession() as session:
        await submit(session, base)
        code, _, stderr = await finish(proc)
    assert code == 1
    assert b"sim.crash" in stderr
    assert not (tmp_path / "output" / "cli_00001_.png").exists()


async def test_slow_start_delays_listening(tmp_path: Path) -> None:
    proc, base, waited = await start(tmp_path, "--slow-start-s", "0.6")
    try:
        assert waited >= 0.6
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/sim/faults") as resp:
                assert (await resp.json())["slow_start_s"] == 0.6
            async with session.get(f"{base}/sim/stats") as resp:
                body = json.loads(await resp.text())
                assert body["prompts_executed"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
    code, _, _ = await finish(proc)
    assert code == 0

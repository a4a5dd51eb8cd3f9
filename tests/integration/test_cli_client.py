"""The `comfyfleet` client commands against a real fleet (coordinator, simulated ComfyUI, agent)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from comfyfleet.client import Client
from tests.helpers.fleet import Fleet, running_fleet, sim_faults, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path) as f:
        f.add_sim("g1", 24576, "--step-ms", "40")
        f.add_agent("c1", "g1")
        with Client(f.url) as client:
            client._run(client._aio.wait_ready(1, 30))
        yield f


def cli(
    fleet: Fleet, *args: str, env_url: bool = False, **kw: object
) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ}
    argv = [sys.executable, "-m", "comfyfleet", *args]
    if env_url:
        env["COMFYFLEET_COORDINATOR"] = fleet.url
    else:
        argv += ["--coordinator", fleet.url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, **kw)  # type: ignore[call-overload]


def test_submit_wait_downloads_and_listings(fleet: Fleet, tmp_path: Path) -> None:
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(txt2img(320, 192, steps=6, prefix="cli")))
    out = tmp_path / "out"
    done = cli(
        fleet,
        "submit",
        str(wf),
        "--vram-mb",
        "3000",
        "--priority",
        "3",
        "--wait",
        "--out",
        str(out),
        env_url=True,
    )
    assert done.returncode == 0, done.stderr
    assert "submitted " in done.stderr and "KSampler" in done.stderr and "eta" in done.stderr
    files = [Path(line) for line in done.stdout.split()]
    assert len(files) == 1 and Image.open(files[0]).size == (320, 192)

    jobs = json.loads(cli(fleet, "jobs", "--json").stdout)
    job_id = jobs["jobs"][0]["id"]
    assert jobs["jobs"][0]["status"] == "COMPLETED" and jobs["jobs"][0]["priority"] == 3
    detail = cli(fleet, "job", job_id)
    assert detail.returncode == 0 and "RUNNING -> COMPLETED" in detail.stdout
    assert json.loads(cli(fleet, "job", job_id, "--json").stdout)["id"] == job_id
    agents = cli(fleet, "agents")
    assert agents.returncode == 0 and "c1" in agents.stdout and "ONLINE" in agents.stdout
    assert "[" in agents.stdout and "of 24.0G" in agents.stdout
    assert json.loads(cli(fleet, "agents", "--json").stdout)[0]["id"] == "c1"
    top = cli(fleet, "top", "--once")
    assert top.returncode == 0 and "comfyfleet top" in top.stdout and job_id in top.stdout

    live = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyfleet",
            "top",
            "--interval",
            "0.3",
            "--coordinator",
            fleet.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        live.send_signal(signal.SIGINT)
        out, err = live.communicate(timeout=30)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert live.returncode == 0, err
    assert out.count("comfyfleet top") >= 2 and "\x1b[2J" in out  # redrawn in place


def test_cancelled_and_failed_exit_codes(fleet: Fleet, tmp_path: Path) -> None:
    wf = tmp_path / "long.json"
    wf.write_text(json.dumps(txt2img(512, 512, steps=400, prefix="long")))
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyfleet",
            "submit",
            str(wf),
            "--wait",
            "--coordinator",
            fleet.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Client(fleet.url) as client:
            deadline = time.monotonic() + 60
            while True:
                running = client.jobs("RUNNING").jobs
                if running:
                    break
                assert time.monotonic() < deadline, "the long job never ran"
                time.sleep(0.1)
            cancelled = cli(fleet, "cancel", running[0].id)
            assert cancelled.returncode == 0 and running[0].id in cancelled.stdout
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 2, err
        assert "CANCELLED" in err
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()

    sim_faults(fleet.sim_urls["g1"], fail_class_type="VAEDecode")
    wf.write_text(json.dumps(txt2img(256, 256, steps=2, prefix="bad")))
    failed = cli(fleet, "submit", str(wf), "--wait")
    assert failed.returncode == 1, failed.stderr
    assert "FAILED" in failed.stderr


def test_bad_input_is_a_message_not_a_traceback(fleet: Fleet, tmp_path: Path) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [{"id": 1}], "links": [], "version": 0.4}))
    res = cli(fleet, "submit", str(ui))
    assert res.returncode == 2 and "API format" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}))
    res = cli(fleet, "submit", str(bad))
    assert res.returncode == 2 and "HTTP 400" in res.stderr and "Traceback" not in res.stderr
    res = cli(fleet, "job", "no-such-job")
    assert res.returncode == 2 and "HTTP 404" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "comfyfleet", "jobs", "--coordinator", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "cannot reach" in res.stderr and "Traceback" not in res.stderr

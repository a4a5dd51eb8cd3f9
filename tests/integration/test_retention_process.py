"""Retention in a real coordinator process: with a 2 s TTL finished jobs and their outputs
disappear, an open job never does, and a SIGKILL in the middle of a sweep leaves the store and
the disk consistent (checked by listing every file and every record)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import procs
from tests.helpers.protocol_agent import ProtocolAgent
from tests.integration.test_coordinator_process import get, submit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

JOBS = 150
FILES_PER_JOB = 4


def args(sweep_s: float) -> list[str]:
    return [
        "--heartbeat-interval", "30",  # the agent is not lost during the test
        "--restart-grace", "60",  # nor after the restart: nothing requeues the open job
        "--set", "retention_s=2",
        "--set", f"retention_sweep_s={sweep_s}",
    ]  # fmt: skip


def job_dirs(outputs: Path) -> set[str]:
    return set(os.listdir(outputs)) if outputs.exists() else set()


def consistency(data: Path) -> tuple[set[str], set[str]]:
    """Every file and every record: (job ids with records, job ids noted doomed). Asserts that
    no record names an output that is missing, and that every file belongs to a record or to a
    job noted doomed (whose outputs the next sweep removes)."""
    db = sqlite3.connect(f"file:{data / 'coordinator.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, status, state FROM jobs").fetchall()
        doomed = {r[0] for r in db.execute("SELECT job_id FROM doomed_outputs")}
    finally:
        db.close()
    records = {job_id for job_id, _, _ in rows}
    outputs = data / "outputs"
    for job_id, status, state in rows:
        if status == "COMPLETED":
            for out in json.loads(state)["outputs"]:
                path = outputs / job_id / str(out["attempt"]) / out["name"]
                assert path.is_file(), f"record {job_id} names {path}, which is missing"
    for path in outputs.rglob("*"):
        if path.is_file():
            owner = path.relative_to(outputs).parts[0]
            assert owner in records or owner in doomed, f"orphan file {path}"
    assert not records & doomed
    return records, doomed


async def test_sigkill_mid_sweep_leaves_store_and_disk_consistent(tmp_path: Path) -> None:
    data, port = tmp_path / "data", procs.free_port()
    coord = procs.coordinator(data, tmp_path, port, args(sweep_s=10.0)).start()
    url = coord.url  # type: ignore[attr-defined]
    outputs = data / "outputs"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            agent = ProtocolAgent(s, url, "a1", gpus=[("Sim GPU", 24576)] * 2)
            await agent.register()
            opened = await submit(s, url)
            open_job = (await agent.lease(3.0, free={"0": 1})).jobs[0]
            await agent.started(open_job)
            await agent.upload(open_job, "partial.png", b"p" * 10)  # an open job's file
            done = [(await submit(s, url))["id"] for _ in range(JOBS)]
            for _ in done:
                job = (await agent.lease(3.0, free={"1": 1})).jobs[0]
                await agent.started(job)
                outs = [
                    await agent.upload(job, f"o{i}.png", b"x" * 100) for i in range(FILES_PER_JOB)
                ]
                await agent.finish(job, outputs=outs)
            assert len(job_dirs(outputs)) == JOBS + 1
            consistency(data)
            # wait for the sweep to start deleting, then kill the coordinator in its middle
            deadline = time.monotonic() + 30
            while len(job_dirs(outputs)) == JOBS + 1:
                assert time.monotonic() < deadline, "no sweep started"
                await asyncio.sleep(0.001)
            coord.kill(signal.SIGKILL)
            left = len(job_dirs(outputs)) - 1
            assert 0 < left < JOBS, f"the kill missed the sweep ({left} of {JOBS} left)"
            records, doomed = consistency(data)  # consistent even right after the kill
            assert opened["id"] in records

            coord = procs.coordinator(data, tmp_path, port, args(sweep_s=0.2)).start()
            deadline = time.monotonic() + 30
            while job_dirs(outputs) != {opened["id"]}:
                assert time.monotonic() < deadline, sorted(job_dirs(outputs))[:5]
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the sweep also drops its doomed notes
            records, doomed = consistency(data)
            assert records == {opened["id"]} and doomed == set()
            for job_id in done[:3]:
                async with s.get(f"{url}/v1/jobs/{job_id}") as r:
                    assert r.status == 404
            assert (await get(s, url, opened["id"]))["status"] == "RUNNING"
            async with s.get(f"{url}/metrics") as r:
                metrics = await r.text()
            assert "comfyfleet_output_bytes_deleted_total" in metrics
            assert "comfyfleet_output_bytes_stored" in metrics
    except BaseException:
        print(coord.log()[-6000:])
        raise
    finally:
        coord.kill(signal.SIGKILL)

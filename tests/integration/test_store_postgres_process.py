"""A real coordinator process on `--store postgresql://...` (the session's throwaway cluster),
with a simulated ComfyUI and an agent: jobs complete, the coordinator is SIGKILLed mid-queue and
restarted, and every accepted job completes exactly once. Without PostgreSQL this fails."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers.fleet import api_session, running_fleet, txt2img
from tests.helpers.postgres import Cluster
from tests.helpers.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DONE = {"COMPLETED", "FAILED", "CANCELLED"}


@pytest.fixture
def database(pg_cluster: Cluster) -> Iterator[str]:
    name = pg_cluster.new_database()
    yield name
    pg_cluster.drop_database(name)


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


async def test_queued_jobs_survive_sigkill_of_a_coordinator_on_postgres(
    tmp_path: Path, pg_cluster: Cluster, database: str
) -> None:
    url = pg_cluster.url(database)
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--store", url]
    with running_fleet(tmp_path, args) as fleet:
        fleet.add_sim("a", 24576, "--step-ms", "100")
        fleet.add_agent("a", "a")
        async with api_session(fleet.url) as api:
            await api.agents_online({"a"})
            early = [await api.submit(txt2img(64, 64, steps=2, prefix=f"e{i}")) for i in range(2)]
            for job in early:
                assert (await api.wait(job["id"], DONE))["status"] == "COMPLETED"
            ids = [
                (await api.submit(txt2img(512, 512, steps=5, prefix=f"k{i}")))["id"]
                for i in range(8)
            ]
            before = {i: (await api.job(i))["status"] for i in ids}
            assert "QUEUED" in before.values(), before  # one agent cannot have taken all 8

            fleet.coord.kill(signal.SIGKILL)
            assert not (tmp_path / "coord" / "coordinator.db").exists()  # not SQLite
            stored = {r[0]: r[1] for r in rows(url, "SELECT id, status FROM jobs")}
            assert set(ids) <= set(stored)
            assert all(stored[i] != "COMPLETED" for i, s in before.items() if s == "QUEUED")
            fleet.start_coordinator()

            for job_id in ids:
                done = await api.wait(job_id, DONE, wait_s=90)
                assert done["status"] == "COMPLETED", done
                completed = [t for t in done["history"] if t["to_status"] == "COMPLETED"]
                assert len(completed) == 1, done["history"]
                assert (
                    len(done["outputs"]) == 1
                    and f"k{ids.index(job_id)}" in (done["outputs"][0]["name"])
                )
                assert await api.image_size(done["outputs"][0]) == (512, 512)
            for job in early:  # finished before the kill: still there, outputs and all
                again = await api.job(job["id"])
                assert again["status"] == "COMPLETED" and len(again["outputs"]) == 1
    assert rows(url, "SELECT status, count(*) FROM jobs GROUP BY status") == [("COMPLETED", 10)]


def test_an_unreachable_database_is_a_one_line_error(tmp_path: Path) -> None:
    store = f"postgresql://fleet:pw-not-shown@127.0.0.1:{free_port()}/fleet"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "comfyfleet",
            "coordinator",
            "--data-dir",
            str(tmp_path / "coord"),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--store",
            store,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "pw-not-shown" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("comfyfleet coordinator: job store postgresql://fleet:********@")
    assert "PostgreSQL unavailable" in last and "Connection refused" in last

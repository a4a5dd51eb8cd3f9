"""A client following a job's events survives a coordinator SIGKILL and restart."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.client import Client, StreamEvent
from tests.helpers.fleet import Fleet, running_fleet, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path) as f:
        f.add_sim("g1", 24576, "--step-ms", "40")
        f.add_agent("r1", "g1")
        yield f


def test_job_stream_resumes_across_a_coordinator_restart(fleet: Fleet) -> None:
    with Client(fleet.url) as client:
        client._run(client._aio.wait_ready(1, 30))
        job = client.submit(txt2img(512, 512, steps=300, prefix="restart"), vram_mb=4000)
        seen: list[StreamEvent] = []
        progressing = threading.Event()
        failure: list[BaseException] = []

        def follow() -> None:
            try:
                with Client(fleet.url) as follower:
                    for event in follower.events(job.id):
                        seen.append(event)
                        if event.kind == "progress":
                            progressing.set()
            except BaseException as exc:  # reported by the test below
                failure.append(exc)
                progressing.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert progressing.wait(60), "no progress event arrived"
        assert not failure, failure
        fleet.coord.kill(signal.SIGKILL)
        fleet.start_coordinator()
        reader.join(120)
        assert not reader.is_alive(), "the stream did not end after the job finished"
        assert not failure, failure
        assert seen[-1].terminal and seen[-1].data["status"] == "COMPLETED", seen[-1]
        ids = [e.id or 0 for e in seen]
        assert ids == sorted(ids), "event ids grow across the restart"
        statuses = [e.data["status"] for e in seen if e.kind == "job"]
        assert statuses.count("RUNNING") >= 2, statuses  # the snapshot after reconnecting
        assert client.get(job.id).status == "COMPLETED"

"""Small outputs travel inside the finish report, as real processes on 127.0.0.1: a coordinator
that takes outputs of up to 10,000 bytes inline, one agent behind a counting proxy, a simulated
ComfyUI. Jobs with small images (512 px: about 4 KB) complete with no output upload (no PUT);
a large one (2048 px: about 59 KB) is still uploaded in a chunk. Every image is served whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import procs
from tests.helpers.fleet import Api, Fleet, running_fleet, txt2img
from tests.integration.test_report_durability import outage, start_proxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
SMALL = 4


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:  # the conftest's `api` follows this one
    args = ["--heartbeat-interval", "0.5", "--set", "inline_output_bytes=10000"]
    with running_fleet(tmp_path, args) as f:
        yield f


async def test_small_outputs_need_no_upload_and_a_large_one_is_uploaded(
    fleet: Fleet, api: Api
) -> None:
    proxy_proc, proxy = start_proxy(fleet.tmp, fleet.url)
    try:
        sim = fleet.add_sim("g", 24576, "--step-ms", "10")
        fleet.agents["a"] = procs.Proc(
            "agent-a",
            ["agent", "--coordinator", proxy, "--agent-id", "a", "--comfyui", sim]
            + ["--data-dir", str(fleet.tmp / "agent-a")],
            fleet.tmp,
            f"{fleet.url}/v1/agents/a",
        ).start(wait=False)
        await api.agents_online({"a"})
        small = [
            (await api.submit(txt2img(512, 512, steps=2, prefix=f"s{i}")))["id"]
            for i in range(SMALL)
        ]
        done = [await api.wait(i, {"COMPLETED", "FAILED", "CANCELLED"}, 60) for i in small]
        assert [d["status"] for d in done] == ["COMPLETED"] * SMALL, done
        forwarded = outage(proxy)["forwarded"]
        assert forwarded.get("PUT jobs", 0) == 0, forwarded  # not one output upload
        assert forwarded.get("POST reports", 0) + forwarded.get("POST finish", 0) >= 1
        for d in done:
            assert [await api.image_size(o) for o in d["outputs"]] == [(512, 512)]
        big = (await api.submit(txt2img(2048, 2048, steps=2, prefix="big")))["id"]
        last = await api.wait(big, {"COMPLETED", "FAILED", "CANCELLED"}, 60)
        assert last["status"] == "COMPLETED", last
        assert last["outputs"][0]["size"] > 10000
        assert [await api.image_size(o) for o in last["outputs"]] == [(2048, 2048)]
        assert outage(proxy)["forwarded"].get("PUT jobs", 0) == 1  # the large one: one chunk
    finally:
        if proxy_proc.poll() is None:
            proxy_proc.kill()
            proxy_proc.wait(10)

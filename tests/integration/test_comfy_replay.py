"""The recorded ComfyUI sessions (tests/helpers/replay.py) replayed against two targets:

- `simulator`: the ComfyUI simulator alone, in process (how faithful it is to ComfyUI);
- `facade`: a coordinator with `--comfy-listen`, one simulated ComfyUI and its agent, as real
  processes (the fleet answers as one ComfyUI would). Beyond the recordings, the file names the
  facade gives (the job leads the subfolder) are served by its /view.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.server import create_app
from tests.helpers import procs, replay
from tests.helpers.fleet import running_fleet
from tests.helpers.replay_target import Target

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_JOB_SUB = re.compile(r'"subfolder": "comfy-[0-9a-f]{32}/?')


def unjob(value: Any) -> Any:
    """The facade's file names as ComfyUI's (the job id taken off the subfolder)."""
    return json.loads(_JOB_SUB.sub('"subfolder": "', json.dumps(value)))


@pytest.fixture(scope="module")
def facade_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("facade")
    port = procs.free_port()
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--comfy-listen",
            f"127.0.0.1:{port}"]  # fmt: skip
    with running_fleet(tmp, args) as fleet:
        fleet.add_sim("s1", 24576, "--step-ms", "5")
        fleet.add_agent("s1", "s1")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # the agent has described its ComfyUI
            with urllib.request.urlopen(f"{url}/object_info/SaveImage", timeout=5) as resp:
                if json.loads(resp.read()):
                    break
            assert time.monotonic() < deadline, fleet.logs()
            time.sleep(0.1)
        yield url


@pytest.fixture(params=["simulator", "facade"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    if request.param == "facade":
        url = request.getfixturevalue("facade_url")  # one fleet for the module, started on use
        async with aiohttp.ClientSession(base_url=url) as http:
            yield Target("facade", http, wait_s=30, view=unjob, copies_outputs=True,
                         dedupes_prompt_ids=True)  # fmt: skip
        return
    config = SimConfig.for_data_dir(tmp_path, step_ms=2, node_ms=0.5, load_ms_per_gb=5, seed=1)
    exits: list[int] = []
    async with TestClient(TestServer(create_app(config, exit_fn=exits.append))) as http:
        yield Target("simulator", http, wait_s=10, output_dir=config.output_dir)


@pytest.mark.parametrize("case", list(replay.CASES))
async def test_replay(target: Target, case: str) -> None:
    await replay.CASES[case](target)


@pytest.mark.parametrize("case", replay.VALIDATION_CASES)
async def test_validation_error_body(target: Target, case: str) -> None:
    await replay.validation_error_body(target, case)

"""One WebSocket clientId per pipeline slot on a ComfyUI instance."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent.instances import Instance, pipeline_client_id
from comfyfleet.agent.state import HeldJob

pytestmark = pytest.mark.timeout(60)


def inst(iid: str = "0") -> Instance:
    return Instance(
        iid,
        "http://127.0.0.1:1",
        None,
        f"comfyfleet-a-{iid}",  # type: ignore[arg-type]
        capacity=2,
    )


def runner(iid: str, cid: str) -> Any:
    return SimpleNamespace(job=SimpleNamespace(instance_id=iid), client_id=cid)


def test_first_slot_keeps_the_plain_id_second_gets_its_own() -> None:
    i = inst()
    assert pipeline_client_id(i, []) == "comfyfleet-a-0"
    assert pipeline_client_id(i, [runner("0", "comfyfleet-a-0")]) == "comfyfleet-a-0-1"
    # a freed first slot is reused; other instances' runners do not count
    assert (
        pipeline_client_id(i, [runner("0", "comfyfleet-a-0-1"), runner("1", "comfyfleet-a-0")])
        == "comfyfleet-a-0"
    )


def test_reattached_job_keeps_its_id_and_old_state_files_get_the_plain_one() -> None:
    i = inst()
    held = HeldJob("j", 1, "0", "p", 60.0, 0.0, "comfyfleet-a-0-1")
    assert pipeline_client_id(i, [runner("0", "comfyfleet-a-0-1")], held) == "comfyfleet-a-0-1"
    old = HeldJob("j", 1, "0", "p", 60.0, 0.0)
    assert pipeline_client_id(i, [], old) == "comfyfleet-a-0"


@given(st.lists(st.sampled_from(["0", "1"]), max_size=8))
def test_ids_in_flight_on_one_instance_are_distinct(order: list[str]) -> None:
    instances = {k: inst(k) for k in ("0", "1")}
    runners: list[Any] = []
    for iid in order:
        runners.append(runner(iid, pipeline_client_id(instances[iid], runners)))
    for iid in ("0", "1"):
        ids = [r.client_id for r in runners if r.job.instance_id == iid]
        assert len(ids) == len(set(ids))

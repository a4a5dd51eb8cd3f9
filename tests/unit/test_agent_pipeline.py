"""One WebSocket clientId per pipeline slot on a ComfyUI instance."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent.instances import Instance, pipeline_client_id
from comfyfleet.agent.state import HeldJob
from comfyfleet.shared.slots import slot_load

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


@given(
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=1, max_value=8),
)
def test_slot_load_frees_finished_prompts_places_within_bounds(
    held: int, finishing: int, capacity: int
) -> None:
    finishing = min(finishing, held)
    load = slot_load(held, finishing, capacity)
    in_comfy = held - finishing
    assert load >= in_comfy  # a prompt still in ComfyUI always takes its place
    # room is left exactly when ComfyUI's queue has a free place and the finishing ones
    # stay within one capacity's worth beyond the places
    room = capacity - load > 0
    assert room == (in_comfy < capacity and held < 2 * capacity)

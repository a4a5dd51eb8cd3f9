"""Restarts of an agent's managed ComfyUI, reported in its heartbeats: each published once on the
fleet stream, counted in /metrics by reason, shown in the agent view; bad fields are a 4xx."""

from __future__ import annotations

import msgspec
import pytest

from comfyfleet.coordinator import events as ev
from comfyfleet.shared import protocol as p
from tests.api.conftest import MakeHarness
from tests.helpers.protocol_agent import ProtocolError

pytestmark = pytest.mark.timeout(30)


def managed(*restarts: p.RestartEvent) -> p.InstanceInfo:
    counts: dict[str, int] = {}
    for r in restarts:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return p.InstanceInfo(
        instance_id="0",
        gpu_index=0,
        kind="process",
        state="ready",
        up_since=100.0,
        last_restart_reason=restarts[-1].reason if restarts else None,
        restart_counts=counts,
        restarts=list(restarts),
    )


async def test_restarts_in_heartbeats_are_published_once_and_counted(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("a1")
    early = p.RestartEvent(at=10.0, reason="start_failed", detail="exit code 3")
    agent.instances = [managed(early)]
    await agent.register()  # known before this coordinator saw the agent: not published
    sub = h.coord.bus.subscribe(None, None)
    crash = p.RestartEvent(at=20.0, reason="exited", detail="killed by SIGKILL", job_id="j1")
    agent.instances = [managed(early, crash)]
    await agent.heartbeat()
    await agent.heartbeat()  # the same list again: nothing new
    hang = p.RestartEvent(at=30.0, reason="hung_prompt", detail="no event")
    agent.instances = [managed(early, crash, hang)]
    await agent.heartbeat()
    published = [e.data for e in sub.buffer if e.kind == ev.COMFYUI_RESTARTED]
    assert [(d["reason"], d["job_id"], d["instance_id"]) for d in published] == [
        ("exited", "j1", "0"),
        ("hung_prompt", None, "0"),
    ]
    metrics = await (await h.client.get("/metrics")).text()
    for reason, n in (("start_failed", 1), ("exited", 1), ("hung_prompt", 1)):
        line = f'comfyfleet_comfyui_restarts_total{{agent_id="a1",instance="0",reason="{reason}"}}'
        assert f"{line} {n}.0" in metrics, metrics
    view = await (await h.client.get("/v1/agents/a1")).json()
    inst = view["instances"][0]
    assert inst["state"] == "ready" and inst["last_restart_reason"] == "hung_prompt"
    assert inst["restart_counts"] == {"start_failed": 1, "exited": 1, "hung_prompt": 1}


async def test_a_heartbeat_with_bad_restart_fields_is_refused(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("a1")
    await agent.register()
    bad = msgspec.structs.replace(managed(), restart_counts={"exited": -1})
    agent.instances = [bad]
    with pytest.raises(ProtocolError) as err:
        await agent.heartbeat()
    assert err.value.status == 400 and "restart_counts" in str(err.value)

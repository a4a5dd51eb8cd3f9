"""The submission rule: what no registered agent can ever satisfy is a 422 naming it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.inventory import Need, Offer, fleet_gap

GPU, CPU = frozenset({1}), frozenset({0})


def offer(
    models: set[str] | None = None, classes: set[str] | None = None, kinds: frozenset[int] = GPU
) -> Offer:
    return Offer(
        gpus=kinds,
        models=None if models is None else frozenset(models),
        node_classes=None if classes is None else frozenset(classes),
    )


a = offer({"m1"}, {"A"})
b = offer({"m2"}, {"A", "B"})


def test_inventory_gaps_name_what_no_agent_has() -> None:
    assert fleet_gap(Need(1, ("m1",), (), ("A",)), [a, b]) is None
    assert fleet_gap(Need(1, ("m9",), (), ("A",)), []) is None  # nobody registered: wait
    assert fleet_gap(Need(1, ("m9",), (), ("A",)), [offer()]) is None  # said nothing yet
    gap = fleet_gap(Need(1, ("m9",), (), ("Z",)), [a, b])
    assert gap is not None and gap.field == "workflow"
    assert gap.message == (
        "no agent can run this job: no agent in the fleet has model files m9 and node classes Z"
    )
    gap = fleet_gap(Need(1, ("m1",), (), ("B",)), [a, b])
    assert gap is not None and gap.message == (
        "no agent can run this job: no agent in the fleet has all of model files m1 and "
        "node classes B"
    )


def test_constraint_models_follow_the_same_rule() -> None:
    gap = fleet_gap(Need(1, (), ("m9",), ()), [a, b])
    assert gap is not None and gap.field == "constraints.models"
    assert "model files m9 (constraints.models)" in gap.message
    assert fleet_gap(Need(1, (), ("m2",), ()), [a, b]) is None
    assert fleet_gap(Need(1, (), ("m9",), ()), [a, offer()]) is None  # one has not said


def test_a_gpu_job_on_a_cpu_only_fleet_says_to_ask_for_gpus_0() -> None:
    cpu_only = [offer({"m1"}, {"A"}, CPU), offer(None, None, CPU)]
    gap = fleet_gap(Need(1, ("m1",), (), ("A",)), cpu_only)
    assert gap is not None and gap.field == "resources.gpus"
    assert "a GPU ComfyUI instance" in gap.message and "resources.gpus 0" in gap.message
    assert fleet_gap(Need(0, ("m1",), (), ("A",)), cpu_only) is None
    gap = fleet_gap(Need(0, (), (), ()), [a])  # a CPU job needs a CPU-only instance
    assert gap is not None and gap.field == "resources.gpus" and "CPU-only" in gap.message
    mixed = [offer({"m1"}, {"A"}, CPU), offer(set(), {"A"}, GPU)]
    gap = fleet_gap(Need(1, ("m1",), (), ()), mixed)  # each exists, never together
    assert gap is not None and "all of" in gap.message and "every ComfyUI" not in gap.message
    assert fleet_gap(Need(1, (), (), ()), [offer(kinds=CPU | GPU)]) is None


names = st.sampled_from(["m1", "m2", "m3", "A", "B"])
offers = st.builds(
    Offer,
    gpus=st.none() | st.sampled_from([GPU, CPU, GPU | CPU]),
    models=st.none() | st.frozensets(names),
    node_classes=st.none() | st.frozensets(names),
)
needs = st.builds(
    Need,
    gpus=st.sampled_from([0, 1]),
    models=st.tuples(names) | st.just(()),
    constraint_models=st.tuples(names) | st.just(()),
    node_classes=st.tuples(names) | st.just(()),
)


def could_run(need: Need, o: Offer) -> bool:
    """The scheduler's static view of one agent, written out plainly."""
    have_models = o.models is None or set(need.models + need.constraint_models) <= o.models
    have_classes = o.node_classes is None or set(need.node_classes) <= o.node_classes
    have_kind = o.gpus is None or need.gpus in o.gpus
    return have_models and have_classes and have_kind


@given(needs, st.lists(offers, max_size=4))
def test_refused_exactly_when_no_agent_could_run_it(need: Need, fleet: list[Offer]) -> None:
    gap = fleet_gap(need, fleet)
    assert (gap is None) == (not fleet or any(could_run(need, o) for o in fleet))
    if gap is not None:
        assert gap.field in ("workflow", "constraints.models", "resources.gpus")
        assert gap.message.startswith("no agent can run this job: no agent in the fleet has")

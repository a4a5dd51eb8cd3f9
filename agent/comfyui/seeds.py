"""Random seeds for ``-1`` seed inputs, chosen by the agent so the job records them (pure)."""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from typing import Any

__all__ = ["SEED_INPUTS", "SEED_MAX", "apply_seeds"]

# KSampler's seed/noise_seed max in ComfyUI (nodes.py: "max": 0xffffffffffffffff). The recorded
# object_info only covers EmptyImage and SaveImage, so this is ComfyUI's source value.
SEED_MAX = 0xFFFFFFFFFFFFFFFF
SEED_INPUTS = ("seed", "noise_seed")


def apply_seeds(
    graph: Mapping[str, Any], rng: random.Random
) -> tuple[dict[str, Any], dict[str, int]]:
    """Replace every ``seed``/``noise_seed`` input equal to -1 by a random seed.

    Returns a new graph (the input is not mutated) and ``{node_id: seed}`` for replaced inputs
    (if one node has both, the later input in SEED_INPUTS order wins in the map).
    """
    new_graph = copy.deepcopy(dict(graph))
    seeds: dict[str, int] = {}
    for node_id, node in new_graph.items():
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        for name in SEED_INPUTS:
            value = inputs.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value == -1:
                seed = rng.randint(0, SEED_MAX)
                inputs[name] = seed
                seeds[str(node_id)] = seed
    return new_graph, seeds

"""How often jobs found a warm ComfyUI cache, from the per-node profiles of finished jobs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def cache_hit_line(records: Iterable[Mapping[str, Any]]) -> str:
    """'cache hits: 5 of 8 completed jobs (62%) reused cached nodes; 9 of 56 nodes (16%)'."""
    jobs = hits = nodes = cached = 0
    for rec in records:
        if rec.get("status") != "COMPLETED" or not rec.get("profile"):
            continue
        profile = rec["profile"]
        jobs += 1
        n_cached = sum(1 for n in profile if n.get("cached"))
        hits += n_cached > 0
        nodes += len(profile)
        cached += n_cached
    if not jobs:
        return "cache hits: no completed job reported a node profile"
    return (
        f"cache hits: {hits} of {jobs} completed jobs ({hits / jobs:.0%}) reused cached "
        f"nodes; {cached} of {nodes} nodes ({cached / max(nodes, 1):.0%}) served from cache"
    )

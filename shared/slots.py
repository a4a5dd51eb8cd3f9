"""How full one ComfyUI instance's slot is: the rule the agent and the coordinator both count by.

An instance of capacity C holds up to C prompts in ComfyUI (one runs, the rest wait in its own
queue). A job whose prompt ComfyUI has finished ("finishing": its outputs are being fetched and
its report sent) no longer holds one of those places, so the next job may take it at once and
ComfyUI's queue does not run dry between jobs. Finishing jobs are bounded too: at most C of them
beyond the C places, so a slow coordinator cannot make an agent hold ever more attempts.
"""

from __future__ import annotations


def slot_load(held: int, finishing: int, capacity: int) -> int:
    """Places taken on an instance holding `held` jobs of which `finishing` are done in
    ComfyUI: `capacity - slot_load(...)` more may be placed there."""
    return max(held - finishing, held - capacity)

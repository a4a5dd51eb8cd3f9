"""Pure placement scheduler: feasibility checkers, best-fit ranking, greedy planning.

No I/O, no clock reads (`now` is an argument), no randomness: the same input gives the same plan.
"""

from comfyfleet.coordinator.scheduler.model import (
    AgentView,
    GpuView,
    JobRequest,
    Placement,
    PlanResult,
    SchedulerError,
    SlotView,
)
from comfyfleet.coordinator.scheduler.plan import plan

__all__ = [
    "AgentView",
    "GpuView",
    "JobRequest",
    "Placement",
    "PlanResult",
    "SchedulerError",
    "SlotView",
    "plan",
]

"""Jobs caught in a restart of their ComfyUI: how each one is handed back (pure), as the
`Verdict` its runner reports when the prompt did not succeed.

Every job on an instance that goes down is requeued without spending a retry, except the job
whose prompt was running when the instance crashed or hung (`policy.BREAKING`): that one is
blamed, and when it has broken an instance of this agent `breaks_to_fail` times it fails with
the reason (code INSTANCE_BROKEN: the coordinator fails it and counts the failure against the
(agent, workflow shape) pair for blocking).
"""

from __future__ import annotations

from collections import OrderedDict

from comfyfleet.agent.supervise.policy import BREAKING
from comfyfleet.agent.verdict import Verdict
from comfyfleet.shared import protocol as p

_VERB = {"exited": "crashed", "hung_http": "hung", "hung_prompt": "hung"}


def terms(
    instance_id: str,
    reason: str,
    detail: str,
    *,
    blamed: bool,
    breaks: int,
    breaks_to_fail: int,
    log_tail: str = "",
) -> Verdict:
    """`breaks`: how often this job has now broken an instance (this time included)."""
    details: dict[str, object] = {"instance_id": instance_id, "restart_reason": reason}
    if log_tail:
        details["log_tail"] = log_tail[-4000:]
    if blamed and reason in BREAKING and breaks >= breaks_to_fail:
        details["breaks"] = breaks
        return Verdict(
            "failed",
            p.ErrorInfo(
                code=p.INSTANCE_BROKEN,
                message=(
                    f"this job {_VERB.get(reason, 'broke')} ComfyUI {breaks} times "
                    f"({reason}: {detail})"
                ),
                retryable=False,
                details=details,
            ),
            spend_retry=True,
        )
    return Verdict(
        "requeue",
        p.ErrorInfo(
            code=p.INSTANCE_RESTARTED,
            message=f"ComfyUI restarted ({reason}: {detail}) while the job was on it",
            retryable=True,
            details=details,
        ),
        spend_retry=False,
    )


class BreakBook:
    """How often each job broke an instance of this agent (bounded; oldest forgotten)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.counts: OrderedDict[str, int] = OrderedDict()

    def add(self, job_id: str) -> int:
        n = self.counts.pop(job_id, 0) + 1
        self.counts[job_id] = n
        while len(self.counts) > self.limit:
            self.counts.popitem(last=False)
        return n

"""An agent's reports in one request (POST agent/v1/reports): each applied as it would be alone,
in order, and all their store writes in one transaction (`Ledger.batch`).

A report the coordinator refuses (a stale attempt, an unknown job, outputs not received) gets the
refusal it would get alone, and the others go on. A store fault fails the whole batch (503):
nothing of it is written or kept in memory, and the agent sends it again.
"""

from __future__ import annotations

from collections.abc import Callable

from comfyfleet.coordinator.reports import Reports
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput

# How the API answers a report's exception when it is a refusal (4xx); None: not one
Refusal = Callable[[Exception], p.ReportError | None]


def _named(report: p.Report) -> tuple[str, p.Started | p.Events | p.Finish]:
    if report.started is not None:
        return "started", report.started
    if report.events is not None:
        return "events", report.events
    assert report.finish is not None  # Report holds exactly one
    return "finish", report.finish


def _apply(reports: Reports, report: p.Report) -> p.Ack:
    if report.started is not None:
        return reports.started(report.started)
    if report.events is not None:
        return reports.events(report.events)
    assert report.finish is not None
    return reports.finish(report.finish)


def apply_batch(reports: Reports, msg: p.Reports, refusal: Refusal) -> p.ReportsReply:
    """One ReportAck per report, in order. Raises (nothing applied) when a report names
    another agent than the batch, and on a store fault."""
    for i, report in enumerate(msg.reports):
        kind, body = _named(report)
        if body.agent_id != msg.agent_id:
            raise InvalidInput(
                f"reports.{i}.{kind}.agent_id",
                f"names agent {body.agent_id!r}; every report of a batch names the batch's "
                f"agent {msg.agent_id!r}",
            )
    acks: list[p.ReportAck] = []
    with reports.ledger.batch():
        for report in msg.reports:
            try:
                acks.append(p.ReportAck(ack=_apply(reports, report)))
            except Exception as exc:
                error = refusal(exc)
                if error is None:
                    raise  # a store fault: the whole batch fails, nothing of it kept
                acks.append(p.ReportAck(error=error))
    reports.metrics.report_batch_size.observe(len(acks))
    return p.ReportsReply(acks=acks)

"""Agents' reports (POST agent/v1/reports): each applied as it would be alone, in order, and the
store writes of every reports request that arrived in the same turn of the event loop in one
transaction (`Ledger.batch`): one writer, a group commit across requests and agents.

A report the coordinator refuses (a stale attempt, an unknown job, outputs not received) gets the
refusal it would get alone, and the others go on. A store fault fails the whole group: each of its
requests is answered 503, nothing of any is written or kept in memory, and the agents send them
again.
"""

from __future__ import annotations

import asyncio
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


def check_names(msg: p.Reports) -> None:
    """Every report of a request names the request's agent (InvalidInput: nothing applied)."""
    for i, report in enumerate(msg.reports):
        kind, body = _named(report)
        if body.agent_id != msg.agent_id:
            raise InvalidInput(
                f"reports.{i}.{kind}.agent_id",
                f"names agent {body.agent_id!r}; every report of a batch names the batch's "
                f"agent {msg.agent_id!r}",
            )


def _acks(reports: Reports, msg: p.Reports, refusal: Refusal) -> list[p.ReportAck]:
    acks: list[p.ReportAck] = []
    for report in msg.reports:
        try:
            acks.append(p.ReportAck(ack=_apply(reports, report)))
        except Exception as exc:
            error = refusal(exc)
            if error is None:
                raise  # a store fault: the whole group fails, nothing of it kept
            acks.append(p.ReportAck(error=error))
    return acks


Waiting = tuple[p.Reports, Refusal, "asyncio.Future[p.ReportsReply]"]


class ReportWriter:
    """The one writer of agents' reports. A request joins the group of the current loop turn;
    the group is applied when the turn's other callbacks (the other requests whose bodies came
    in together) have run: every request in arrival order, in one store transaction."""

    def __init__(self, reports: Reports) -> None:
        self.reports = reports
        self.waiting: list[Waiting] = []

    async def submit(self, msg: p.Reports, refusal: Refusal) -> p.ReportsReply:
        check_names(msg)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[p.ReportsReply] = loop.create_future()
        self.waiting.append((msg, refusal, done))
        if len(self.waiting) == 1:
            loop.call_soon(self.flush)
        return await done

    def flush(self) -> None:
        group = [w for w in self.waiting if not w[2].done()]  # a request cancelled meanwhile:
        self.waiting = []  # its agent sends it again
        if not group:
            return
        try:
            with self.reports.ledger.batch():
                answers = [_acks(self.reports, msg, refusal) for msg, refusal, _ in group]
        except Exception as exc:  # the group fails as one: each request hears why (503)
            for _, _, done in group:
                if not done.done():
                    done.set_exception(exc)
            return
        metrics = self.reports.metrics
        metrics.report_group_size.observe(len(group))
        for (_, _, done), acks in zip(group, answers, strict=True):
            metrics.report_batch_size.observe(len(acks))
            if not done.done():
                done.set_result(p.ReportsReply(acks=acks))

"""Outputs that come inside a finish report (`OutputFile.data`) instead of being uploaded.

Before such a report is applied, its files are stored exactly as a completed upload stores them
(outputs.py: `outputs/JOB/ATTEMPT/NAME`, the sha256 checked, the `verified` bookkeeping that the
finish's check reads), off the event loop: one thread hop per request, one fsync per file, each
file written under a temporary name and renamed into place. Then the report is applied as any
other. The attempt is fenced before (a stale attempt writes nothing) and again after (an attempt
gone stale meanwhile keeps no file: its release may have removed its folder before the files
arrived). A fault of the store fails the whole request (503, nothing applied); a bad file (over
the announced size, a checksum that does not match, a name already stored with other content)
refuses its own report, naming the field.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from comfyfleet.coordinator.errors import Conflict, NotFound, StaleAttempt, StoreUnavailable
from comfyfleet.coordinator.outputs import OutputFiles, check_name
from comfyfleet.coordinator.reports import Reports
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput

Problems = dict[int, Exception]  # item index -> why its report is refused (4xx)


@dataclass(frozen=True, slots=True)
class Item:
    """One finish report and where it sits in its request (`reports.3.finish.` or "")."""

    finish: p.Finish
    field: str = ""


def carries_files(finish: p.Finish) -> bool:
    return finish.outcome == "completed" and any(isinstance(o.data, bytes) for o in finish.outputs)


class InlineOutputs:
    def __init__(self, reports: Reports, limit: int) -> None:
        self.reports = reports
        self.limit = limit  # RegisterReply.inline_output_bytes: 0, none accepted

    async def store(self, items: Sequence[Item]) -> Problems:
        """Store the inline files of `items` (finish reports of one request); answers the
        refusal of each item that has one. StoreUnavailable: nothing of the request may be
        applied."""
        problems: Problems = {}
        todo: dict[int, Item] = {}
        for i, item in enumerate(items):
            if not carries_files(item.finish):
                continue
            try:
                self._check(item)
                self.reports.fenced(item.finish.agent_id, item.finish.job_id, item.finish.attempt)
            except (InvalidInput, NotFound, StaleAttempt) as exc:  # refused before any write
                problems[i] = exc
                continue
            todo[i] = item
        if not todo:
            return problems
        outputs = self.reports.outputs
        refusals, fault = await asyncio.to_thread(_write_all, outputs, list(todo.values()))
        for (i, item), refused in zip(todo.items(), refusals, strict=True):
            finish = item.finish
            try:
                self.reports.fenced_after_write(finish.agent_id, finish.job_id, finish.attempt)
            except StaleAttempt as exc:
                problems[i] = exc
                continue
            if refused is not None:
                problems[i] = refused
        if fault is not None and any(i not in problems for i in todo):
            raise fault
        return problems

    async def finish(self, msg: p.Finish) -> p.Ack:
        """One finish report (POST finish): its inline files stored, then the report applied."""
        problems = await self.store([Item(msg)])
        if problems:
            raise problems[0]
        return self.reports.finish(msg)

    def _check(self, item: Item) -> None:
        for j, o in enumerate(item.finish.outputs):
            if not isinstance(o.data, bytes):
                continue
            field = f"{item.field}outputs.{j}"
            if o.size > self.limit:
                raise InvalidInput(
                    f"{field}.data",
                    f"{o.size} bytes inline; this coordinator takes outputs of at most "
                    f"{self.limit} bytes inside a finish report (upload it)",
                    "too_large",
                )
            check_name(o.name, f"{field}.name")


def _write_all(
    files: OutputFiles, items: list[Item]
) -> tuple[list[Exception | None], StoreUnavailable | None]:
    """Blocking (a worker thread): each item's refusal (None: its files are stored), and the
    store's fault if it had one (then no report of the request may be applied)."""
    refusals: list[Exception | None] = []
    planned: list[Planned] = []
    fault: StoreUnavailable | None = None
    for item in items:
        try:
            planned.extend(_planned(files, item))
            refusals.append(None)
        except (InvalidInput, Conflict) as exc:
            refusals.append(exc)
        except StoreUnavailable as exc:
            refusals.append(None)
            fault = exc
    if fault is None:
        try:
            _store(files, planned)
        except StoreUnavailable as exc:
            fault = exc
    return refusals, fault


@dataclass(frozen=True, slots=True)
class Planned:
    key: tuple[str, int, str]
    final: Path
    output: p.OutputFile
    data: bytes


def _planned(files: OutputFiles, item: Item) -> list[Planned]:
    """The files of `item` to write; every check first, so that a refusal writes nothing."""
    finish = item.finish
    job_id, attempt = finish.job_id, finish.attempt
    todo: list[Planned] = []
    for j, o in enumerate(finish.outputs):
        if not isinstance(o.data, bytes):
            continue
        field = f"{item.field}outputs.{j}"
        if hashlib.sha256(o.data).hexdigest() != o.sha256:
            raise InvalidInput(f"{field}.sha256", f"checksum of {o.name}'s data does not match")
        final = files.final_path(job_id, attempt, o.name)
        if final.exists():
            try:
                stored = files.stored(job_id, attempt, o.name)
            except OSError as exc:
                raise StoreUnavailable(f"cannot read output {o.name}: {exc.strerror}") from exc
            if stored != (o.size, o.sha256):
                raise Conflict(f"output {o.name} was already stored with other content", field)
            continue
        todo.append(Planned((job_id, attempt, o.name), final, o, o.data))
    return todo


def _store(files: OutputFiles, planned: list[Planned]) -> None:
    """Each file under a temporary name, then each synced (the first sync's journal commit
    carries most of the others' data), then each renamed into place."""
    tmps = [x.final.with_name(f".inline-{secrets.token_hex(6)}-{x.final.name}") for x in planned]
    try:
        for x, tmp in zip(planned, tmps, strict=True):  # no stored name starts with a dot
            x.final.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(x.data)
        for tmp in tmps:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for x, tmp in zip(planned, tmps, strict=True):
            os.replace(tmp, x.final)
            files.verified[x.key] = (x.output.size, x.output.sha256)
    except OSError as exc:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise StoreUnavailable(f"cannot store outputs: {exc.strerror}") from exc

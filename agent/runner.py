"""One job on one ComfyUI instance: submit, follow, fetch outputs, upload, finish."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog

from comfyfleet.agent.comfyui import events as ev
from comfyfleet.agent.comfyui.client import ComfyUIClient, ComfyUIError
from comfyfleet.agent.comfyui.driver import PromptOutcome, attach_prompt, run_prompt
from comfyfleet.agent.comfyui.frames import Frame
from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.coordinator_client import (
    AgentError,
    CoordinatorClient,
    Refused,
)
from comfyfleet.agent.inputs import rename_inputs, upload_inputs
from comfyfleet.agent.profile import VramSampler, comfyui_held_mb, profile_of
from comfyfleet.agent.rejections import host_specific
from comfyfleet.agent.state import HeldJob, StateFile
from comfyfleet.shared import protocol as p

_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()-]")


class SubmitHook(ComfyUIClient):
    """A ComfyUI client that tells the runner the moment ComfyUI accepted the prompt."""

    def __init__(self, base: ComfyUIClient, on_accepted: Callable[[], Awaitable[None]]) -> None:
        self.__dict__.update(base.__dict__)
        self._on_accepted = on_accepted

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().submit(*args, **kwargs)
        await self._on_accepted()
        return result


def output_name(ref: ev.OutputRef, taken: set[str]) -> str:
    """A safe, unique file name for an output (subfolder flattened into the name)."""
    raw = f"{ref.subfolder}_{ref.filename}" if ref.subfolder else ref.filename
    name = _UNSAFE.sub("_", raw).lstrip(".") or "output"
    name = name[:200]
    base, n = name, 1
    while name in taken:
        n += 1
        name = f"{n}_{base}"
    taken.add(name)
    return name


def error_of(outcome: PromptOutcome) -> p.ErrorInfo:
    if outcome.status == "rejected":
        lacking = host_specific(outcome.rejection, outcome.node_errors)
        if lacking is not None:
            return lacking
        err = outcome.rejection or {}
        first = next(iter(outcome.node_errors.items()), None)
        node_id = first[0] if first else None
        node_type = first[1].get("class_type") if first and isinstance(first[1], dict) else None
        message = err.get("message", "ComfyUI refused the prompt")
        details = first[1].get("errors", []) if first and isinstance(first[1], dict) else []
        if details and isinstance(details[0], dict):
            message = f"{message}: {details[0].get('message', '')} {details[0].get('details', '')}"
        return p.ErrorInfo(
            code=err.get("type") or "invalid_prompt",
            message=message.strip(),
            node_id=node_id,
            node_type=node_type,
            details={"node_errors": outcome.node_errors},
        )
    if outcome.status == "failed" and outcome.error is not None:
        e = outcome.error
        return p.ErrorInfo(
            code="out_of_memory" if e.retryable else "execution_error",
            message=f"{e.exception_type}: {e.exception_message}".strip(": "),
            node_id=e.node_id,
            node_type=e.node_type,
            retryable=e.retryable,
        )
    if outcome.status == "timeout":
        return p.ErrorInfo(code="timeout", message=outcome.reason or "timed out", retryable=True)
    return p.ErrorInfo(
        code=f"comfyui_{outcome.status}", message=outcome.reason or outcome.status, retryable=True
    )


_EXECUTION_SIGNS = (ev.Started, ev.Cached, ev.Executing, ev.Progress, ev.Executed, ev.Preview)
FORWARD_PREVIEWS = 8  # previews kept pending when forwarding frames (else the newest only)


class JobRunner:
    """Runs one assignment; `stop(reason)` asks it to end (cancel, drain, drop)."""

    def __init__(
        self,
        job: p.Assignment,
        client: ComfyUIClient,
        client_id: str,
        coord: CoordinatorClient,
        state: StateFile,
        config: AgentConfig,
        chunk_size: int,
        held: HeldJob | None = None,
        on_lost: Callable[[str], None] | None = None,
        queue_wait_s: float = 0.0,
    ) -> None:
        self.job = job
        self.ref = p.JobRef(job_id=job.job_id, attempt=job.attempt)
        self.client = client
        self.client_id = client_id
        self.coord = coord
        self.state = state
        self.config = config
        self.chunk_size = chunk_size
        self.held = held
        self.on_lost = on_lost
        self.queue_wait_s = queue_wait_s  # what the prompts ahead in ComfyUI may take at most
        self.prompt_id = (
            held.prompt_id if held else f"cf-{job.job_id}-{job.attempt}-{uuid.uuid4().hex[:8]}"
        )
        # RUNNING is reported when ComfyUI starts executing the prompt, not when it queued it:
        # with a pipeline (capacity 2) the next prompt waits in ComfyUI's queue meanwhile.
        self.started_sent = held is not None
        self.seeds: dict[str, int] = {}
        self.cancel = asyncio.Event()
        self.stop_reason: str | None = None  # "cancel" | "drain" | "drop"
        self.progress: float | None = None
        self.accepted = held is not None
        self.pending: list[p.JobEvent] = []
        self.vram_peak_mb: int | None = None
        self.comfy_end: dict[str, Any] | None = (
            None  # forwarded: ComfyUI's error or interrupt frame
        )
        self.log = structlog.get_logger("agent.job").bind(
            job_id=job.job_id, attempt=job.attempt, instance=job.instance_id
        )

    def stop(self, reason: str) -> None:
        if self.stop_reason in (None, "drain") or reason == "drop":
            self.stop_reason = reason
        self.cancel.set()

    def running_info(self) -> p.RunningJob:
        return p.RunningJob(
            job_id=self.job.job_id,
            attempt=self.job.attempt,
            instance_id=self.job.instance_id,
            prompt_id=self.prompt_id if self.accepted else None,
            progress=self.progress,
        )

    async def run(self) -> None:
        flusher = asyncio.create_task(self._flush_loop())
        spool = self.config.spool_dir / f"{self.job.job_id}-{self.job.attempt}"
        sampler = VramSampler(self._held_mb, self.config.vram_sample_s)
        sampler.start()
        try:
            try:
                outcome = await self._drive()
            finally:
                self.vram_peak_mb = await sampler.stop()
            if self.stop_reason == "drop":
                self.log.info("job_dropped", reason="coordinator says this attempt is stale")
                return
            await self._flush()
            await self._report(outcome, spool)
        except Refused as exc:
            if exc.stale:
                self.log.info("job_dropped", reason=exc.error.get("message"))
                self.stop("drop")
            else:
                self.log.error("job_refused", status=exc.status, error=exc.error)
                await self._give_back(exc)
        except AgentError as exc:
            self.log.error("job_report_failed", error=str(exc))
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            self.state.remove(self.job.job_id)
            await asyncio.to_thread(shutil.rmtree, spool, True)

    async def _held_mb(self) -> int | None:
        return comfyui_held_mb(await self.client.system_stats())

    async def _drive(self) -> PromptOutcome:
        if self.held is not None:
            self.log.info("job_reattach", prompt_id=self.prompt_id)
            remaining = self.held.timeout_s - (time.time() - self.held.started_at)
            return await attach_prompt(
                self.client,
                None,
                self.prompt_id,
                self.client_id,
                on_update=self._on_update,
                cancel=self.cancel,
                timeout_s=max(remaining, 1.0),
                stall_s=self.config.stall_s,
                graph=self.job.workflow or None,
                cancel_wait_s=self.config.cancel_wait_s,
                forward_frames=self.job.forward_frames,
            )
        graph, seeds = ev.apply_seeds(self.job.workflow, random.SystemRandom())
        self.seeds = seeds
        if self.job.inputs:
            try:
                graph = rename_inputs(graph, await upload_inputs(self.client, self.job.inputs))
            except ComfyUIError as exc:
                return PromptOutcome(
                    status="lost",
                    prompt_id=self.prompt_id,
                    reason=f"could not upload input files: {exc}",
                )

        async def accepted() -> None:
            self.accepted = True
            self.state.put(
                HeldJob(
                    self.job.job_id,
                    self.job.attempt,
                    self.job.instance_id,
                    self.prompt_id,
                    self.job.timeout_s,
                    time.time(),
                    self.client_id,
                )
            )

        hooked = SubmitHook(self.client, accepted)
        self.log.info("job_submit", prompt_id=self.prompt_id, seeds=seeds)
        return await run_prompt(
            hooked,
            None,
            graph,
            self.prompt_id,
            self.client_id,
            on_update=self._on_update,
            cancel=self.cancel,
            timeout_s=self.job.timeout_s,
            stall_s=self.config.stall_s,
            queue_wait_s=self.queue_wait_s,
            cancel_wait_s=self.config.cancel_wait_s,
            forward_frames=self.job.forward_frames,
            extra_data=self.job.extra_data or None,
        )

    async def _report_started(self) -> None:
        """Tell the coordinator the prompt runs (once, at the first sign of execution)."""
        self.started_sent = True
        try:
            ack = await self.coord.started(self.job, self.prompt_id, self.seeds)
        except Refused as exc:
            if exc.stale:
                self.stop("drop")
                return
            raise
        if ack.status == "cancel":
            self.stop("cancel")

    async def _on_update(self, update: ev.Update | Frame) -> None:
        if not self.started_sent and isinstance(update, _EXECUTION_SIGNS):
            await self._report_started()
        now = time.time()
        event: p.JobEvent | None = None
        if isinstance(update, Frame):  # ComfyUI's own frame, for the coordinator's facade
            msg = dict(update.msg)
            if msg.get("type") in ("execution_error", "execution_interrupted"):
                self.comfy_end = msg
            event = p.JobEvent(kind="comfy", t=now, data=msg)
        elif isinstance(update, ev.Cached):
            event = p.JobEvent(kind="cached", t=now, nodes=list(update.nodes))
        elif isinstance(update, ev.Executing):
            event = p.JobEvent(
                kind="executing", t=now, node=update.node, node_type=update.node_type
            )
        elif isinstance(update, ev.Progress):
            self.progress = update.fraction
            event = p.JobEvent(
                kind="progress",
                t=now,
                node=update.node,
                value=update.value,
                max=update.max,
                fraction=update.fraction,
            )
        elif isinstance(update, ev.Executed):
            event = p.JobEvent(kind="executed", t=now, node=update.node)
        elif isinstance(update, ev.Preview):
            # the newest only; when forwarding frames a few, in their place among them
            keep = FORWARD_PREVIEWS - 1 if self.job.forward_frames else 0
            previews = [e for e in self.pending if e.kind == "preview"]
            drop = {id(e) for e in previews[: max(0, len(previews) - keep)]}
            if drop:
                self.pending = [e for e in self.pending if id(e) not in drop]
            event = p.JobEvent(
                kind="preview", t=now, node=update.node, image=update.image, mime=update.mime
            )
        elif isinstance(update, ev.Text):
            event = p.JobEvent(kind="text", t=now, node=update.node, text=update.text[:4000])
        if event is not None:
            self.pending.append(event)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.events_flush_s)
            await self._flush()

    async def _flush(self) -> None:
        if not self.pending or not self.accepted or self.stop_reason == "drop":
            return
        batch, self.pending = self.pending[:1000], self.pending[1000:]
        try:
            ack = await self.coord.events(self.ref, batch)
        except Refused as exc:
            if exc.stale:
                self.stop("drop")
            return
        except AgentError:
            return  # progress is best effort; the outcome is what must arrive
        if ack.status == "cancel":
            self.stop("cancel")

    async def _report(self, outcome: PromptOutcome, spool: Path) -> None:
        finish: dict[str, Any] = {
            "agent_id": self.coord.agent_id,
            "job_id": self.job.job_id,
            "attempt": self.job.attempt,
            "timings": outcome.timings,
            "vram_peak_mb": self.vram_peak_mb,
            "profile": profile_of(outcome.timings, outcome.cached, self.job.workflow),
        }
        self.log.info(
            "job_outcome",
            status=outcome.status,
            reason=outcome.reason,
            outputs=len(outcome.outputs),
        )
        if outcome.status == "succeeded":
            try:
                files = await self._collect(outcome, spool)
            except (ComfyUIError, OSError) as exc:
                self.log.warning("outputs_fetch_failed", error=str(exc))
                await self._finish(
                    finish,
                    "requeue",
                    error=p.ErrorInfo(
                        code="outputs_unavailable",
                        message=f"could not fetch outputs: {exc}",
                        retryable=True,
                    ),
                )
                return
            await self._finish(finish, "completed", outputs=files)
        elif outcome.status in ("cancelled", "timeout") and self.stop_reason == "drain":
            await self._finish(
                finish,
                "requeue",
                spend_retry=False,
                error=p.ErrorInfo(code="drain", message="agent draining"),
            )
        elif outcome.status == "cancelled" and self.stop_reason == "cancel":
            await self._finish(finish, "cancelled", error=self._interrupted_at(outcome))
        elif outcome.status in ("failed", "rejected") and not outcome.retryable:
            err = self._with_comfy_end(error_of(outcome))  # a model or node class missing here
            await self._finish(finish, "requeue" if err.retryable else "failed", error=err)
        else:
            if outcome.status == "lost" and self.on_lost is not None:
                self.on_lost(outcome.reason)
            await self._finish(finish, "requeue", error=error_of(outcome))

    def _interrupted_at(self, outcome: PromptOutcome) -> p.ErrorInfo | None:
        """Forwarding frames: where ComfyUI stopped a cancelled prompt, with its own frame."""
        if self.comfy_end is None or self.comfy_end.get("type") != "execution_interrupted":
            return None
        where = outcome.interrupted
        return self._with_comfy_end(
            p.ErrorInfo(
                code="interrupted",
                message=outcome.reason or "interrupted",
                node_id=where.node_id if where else None,
                node_type=where.node_type if where else None,
            )
        )

    def _with_comfy_end(self, err: p.ErrorInfo) -> p.ErrorInfo:
        """ComfyUI's own error frame, kept with the error (the facade's /history)."""
        if self.comfy_end is None:
            return err
        return msgspec.structs.replace(err, details={**err.details, "comfy": self.comfy_end})

    async def _give_back(self, refused: Refused) -> None:
        """The coordinator refused a report (4xx, not stale): hand the attempt back with the
        reason, so the job is retried or fails now instead of sitting RUNNING until its timeout.
        """
        message = str(refused.error.get("message", refused))[:1000]
        if refused.error.get("field"):
            message = f"{refused.error['field']}: {message}"
        try:
            await self.coord.finish(
                p.Finish(
                    agent_id=self.coord.agent_id,
                    job_id=self.job.job_id,
                    attempt=self.job.attempt,
                    outcome="requeue",
                    error=p.ErrorInfo(
                        code="report_refused",
                        retryable=True,
                        message=f"coordinator refused the agent's report: {message}",
                    ),
                )
            )
        except AgentError as exc:
            self.log.error("job_give_back_failed", error=str(exc))

    async def _finish(self, base: Mapping[str, Any], outcome: str, **kw: Any) -> None:
        ack = await self.coord.finish(p.Finish(**base, outcome=outcome, **kw))
        self.log.info("job_finished", outcome=outcome, status=ack.status)

    async def _collect(self, outcome: PromptOutcome, spool: Path) -> list[p.OutputFile]:
        await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
        taken: set[str] = set()
        files: list[p.OutputFile] = []
        for ref in outcome.outputs:
            if ref.type != "output" and not self.job.forward_frames:
                continue  # previews (temp) are not results (the ComfyUI facade shows them)
            name = output_name(ref, taken)
            path = spool / name
            got = await self.client.view(ref, path, self.config.max_output_bytes)
            await self.coord.upload(self.ref, name, path, got.size, got.sha256, self.chunk_size)
            files.append(
                p.OutputFile(
                    name=name,
                    size=got.size,
                    sha256=got.sha256,
                    content_type=got.content_type,
                    node_id=ref.node_id,
                    kind=ref.type,
                    comfy_ref=p.ComfyRef(
                        filename=ref.filename, subfolder=ref.subfolder, type=ref.type
                    )
                    if self.job.forward_frames
                    else None,
                )
            )
        return files

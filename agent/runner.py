"""One job on one ComfyUI instance: submit, follow, fetch outputs, report through the outbox."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog

from comfyfleet.agent import comfy_files as cf
from comfyfleet.agent.collect import COMFYUI_FETCH, collect_outputs
from comfyfleet.agent.comfyui import events as ev
from comfyfleet.agent.comfyui.client import ComfyUIClient, ComfyUIError
from comfyfleet.agent.comfyui.driver import PromptOutcome, attach_prompt, run_prompt
from comfyfleet.agent.comfyui.frames import Frame
from comfyfleet.agent.comfyui.seeds import apply_seeds
from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.coordinator_client import AgentError, CoordinatorClient, Refused
from comfyfleet.agent.deliver import send_finish
from comfyfleet.agent.inputs import rename_inputs, upload_inputs
from comfyfleet.agent.outbox import Outbox, Report
from comfyfleet.agent.profile import VramWatch, profile_of
from comfyfleet.agent.state import HeldJob, StateFile
from comfyfleet.agent.verdict import Verdict, verdict_of, with_comfy_frames
from comfyfleet.shared import protocol as p


class SubmitHook(ComfyUIClient):
    """A ComfyUI client that tells the runner the moment ComfyUI accepted the prompt."""

    def __init__(self, base: ComfyUIClient, on_accepted: Callable[[], Awaitable[None]]) -> None:
        self.__dict__.update(base.__dict__)
        self._on_accepted = on_accepted

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().submit(*args, **kwargs)
        await self._on_accepted()
        return result


_EXECUTION_SIGNS = (ev.Started, ev.Cached, ev.Executing, ev.Progress, ev.Executed, ev.Preview)
FORWARD_PREVIEWS = 8  # previews kept pending when forwarding frames (else the newest only)


class JobRunner:
    """Runs one assignment; `stop(reason)` asks it to end (cancel, drain, drop).

    Its result goes through the outbox: the finish report (with the outputs in the spool) is
    sent until the coordinator acknowledges it, and kept on disk when that takes longer than
    `report_keep_s` (or the agent stops first); until then the state file holds the prompt, so
    a restarted agent re-attaches to it and fetches its outcome from ComfyUI again. A runner
    made with `report` (found in the outbox after a restart) only sends it.
    """

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
        report: Report | None = None,
        outbox: Outbox | None = None,
        vram: VramWatch | None = None,
        files: cf.ComfyFiles | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.job = job
        self.files = files  # the instance's folders: what this attempt creates there goes after
        self.made = cf.Created()  # outputs it created there, not yet in the files ledger
        self.vram = vram  # the instance's shared VRAM reading (no per-job /system_stats)
        self.ref = p.JobRef(job_id=job.job_id, attempt=job.attempt)
        self.client = client
        self.client_id = client_id
        self.coord = coord
        self.state = state
        self.config = config
        self.chunk_size = chunk_size
        self.held = held
        self.report = report
        self.outbox = outbox or Outbox(config.spool_dir)
        self.on_lost = on_lost
        self.on_done = on_done
        # ComfyUI is done with the prompt (or it never reached ComfyUI): the attempt no longer
        # holds a place in ComfyUI's queue (shared/slots.py)
        self.prompt_done = report is not None
        self.queue_wait_s = queue_wait_s  # what the prompts ahead in ComfyUI may take at most
        self.prompt_id = (
            held.prompt_id
            if held
            else report.prompt_id
            if report
            else f"cf-{job.job_id}-{job.attempt}-{uuid.uuid4().hex[:8]}"
        )
        # RUNNING is reported when ComfyUI starts executing the prompt, not when it queued it:
        # with a pipeline (capacity 2) the next prompt waits in ComfyUI's queue meanwhile.
        self.started_sent = held is not None or report is not None
        self.executing = False  # seen ComfyUI execute the prompt (else: waiting in its queue)
        self.seeds: dict[str, int] = {}
        self.cancel = asyncio.Event()
        self.stop_reason: str | None = None  # "cancel" | "drain" | "drop"
        self.progress: float | None = None
        self.accepted = held is not None or report is not None
        self.pending: list[p.JobEvent] = []
        self.vram_peak_mb: int | None = None
        self.delivery: asyncio.Future[None] | None = None
        self.last_event_at = time.monotonic()  # the instance healer spots hung prompts by it
        self.caught: Verdict | None = None  # how to report it if a ComfyUI restart caught it
        self.comfy_end: dict[str, Any] | None = None  # forwarded: ComfyUI's error/interrupt frame
        self.log = structlog.get_logger("agent.job").bind(
            job_id=job.job_id, attempt=job.attempt, instance=job.instance_id
        )

    @property
    def key(self) -> tuple[str, int]:
        return (self.job.job_id, self.job.attempt)

    def stop(self, reason: str) -> None:
        if self.stop_reason in (None, "drain") or reason == "drop":
            self.stop_reason = reason
        self.cancel.set()
        if reason == "drop" and self.delivery is not None:
            self.delivery.cancel()  # the coordinator has moved on: nothing left to tell it

    def running_info(self) -> p.RunningJob:
        return p.RunningJob(
            job_id=self.job.job_id,
            attempt=self.job.attempt,
            instance_id=self.job.instance_id,
            prompt_id=self.prompt_id if self.accepted else None,
            progress=self.progress,
            started=self.executing,
        )

    async def run(self) -> None:
        """Until the coordinator has the attempt's report, or says the attempt is stale. When
        cancelled (the agent stops) the outbox and the state file keep what a restart needs."""
        with structlog.contextvars.bound_contextvars(
            job_id=self.job.job_id, attempt=self.job.attempt
        ):
            settled = False
            try:
                settled = await self._run()
            except AgentError as exc:  # final, but no refusal: the outbox keeps it for a restart
                self.log.error("job_report_failed", error=str(exc))
            finally:
                if settled:
                    self.state.remove(*self.key)
                    await asyncio.to_thread(self.outbox.remove, self.job.job_id, self.job.attempt)
                    if self.files is not None:  # the coordinator has them: out of ComfyUI's folders
                        await asyncio.to_thread(
                            self.files.release, self.job.job_id, self.job.attempt, self.made
                        )

    async def _run(self) -> bool:
        kept = self.report is not None
        report = self.report if self.report is not None else await self._run_prompt()
        if report is not None and self.stop_reason != "drop":
            self.delivery = asyncio.ensure_future(self._deliver(report))
            try:
                if not kept:  # most reports are acknowledged before they need the disk
                    await asyncio.wait({self.delivery}, timeout=self.config.report_keep_s)
                    if not self.delivery.done():
                        kept = await self._keep(report)
                await self.delivery
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.stop_reason != "drop" or (task is not None and task.cancelling()):
                    self.delivery.cancel()
                    if not kept:  # the agent stops: the report waits in the outbox
                        self._keep_now(report)
                    raise  # not settled
        if self.stop_reason == "drop":
            self.log.info("job_dropped", reason="coordinator says this attempt is stale")
        return True

    async def _run_prompt(self) -> Report | None:
        """Run the prompt to its end and keep its report in the outbox (None: dropped)."""
        flusher = asyncio.create_task(self._flush_loop())
        if self.vram is not None:
            self.vram.open(self.key)
        try:
            try:
                outcome = await self._drive()
            finally:
                self.vram_peak_mb = self.vram.close(self.key) if self.vram is not None else None
                self.prompt_done = True
                if self.on_done is not None:
                    self.on_done()
            if self.stop_reason == "drop":
                return None
            await self._flush()
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        return await self._settle(outcome)

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
        graph, seeds = apply_seeds(self.job.workflow, random.SystemRandom())
        self.seeds = seeds
        folders = self.files.folders if self.files is not None else cf.ComfyFolders()
        if folders.output is not None:
            graph = cf.uncached_outputs(graph, self.prompt_id)
        if self.job.inputs:
            try:
                uploaded = await self._upload_inputs(folders.input is not None)
                graph = rename_inputs(graph, uploaded)
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

    async def _upload_inputs(self, own_names: bool) -> dict[str, str]:
        """Upload the job's input files; {name in the workflow: name ComfyUI stored}. With the
        input folder known, under the agent's own names (recorded first) so they can go after."""
        if not own_names:
            return await COMFYUI_FETCH.call(
                lambda: upload_inputs(self.client, self.job.inputs), "comfyui upload inputs"
            )
        assert self.files is not None
        own = {n: cf.input_name(self.job.job_id, self.job.attempt, n) for n in self.job.inputs}
        created = cf.Created(inputs=tuple(own.values()))
        await asyncio.to_thread(self.files.record, self.job.job_id, self.job.attempt, created)
        data = {own[n]: self.job.inputs[n] for n in self.job.inputs}
        stored = await COMFYUI_FETCH.call(
            lambda: upload_inputs(self.client, data), "comfyui upload inputs"
        )
        return {n: stored.get(own[n], own[n]) for n in self.job.inputs}

    async def _report_started(self) -> None:
        """Tell the coordinator the prompt runs (once, at the first sign of execution), once
        the state file holds it: a RUNNING job can be re-attached after an agent restart."""
        self.started_sent = True
        try:
            await self.state.sync()
        except OSError as exc:  # the job goes on; only a restart could not re-attach to it
            self.log.error("state_file_write_failed", error=str(exc))
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
        self.last_event_at = time.monotonic()
        if isinstance(update, _EXECUTION_SIGNS):
            self.executing = True
            if not self.started_sent:
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

    async def _settle(self, outcome: PromptOutcome) -> Report:
        """Fetch the outputs into the spool and keep the finish report in the outbox."""
        verdict = verdict_of(outcome, self.stop_reason, self.caught)
        if self.files is not None and self.files.folders.output is not None:
            # in the ledger only with the report in the outbox (`_keep`): until then the state
            # file holds the prompt, and a restarted agent learns its outputs from ComfyUI again
            self.made = cf.Created(outputs=cf.created_outputs(outcome.outputs, outcome.cached))
        files: list[p.OutputFile] = []
        if verdict.outcome == "completed":
            try:
                files = await collect_outputs(
                    outcome,
                    self.outbox.folder(*self.key),
                    self.client,
                    self.job.forward_frames,
                    self.config.max_output_bytes,
                    self.files.folders.output if self.files is not None else None,
                )
            except (ComfyUIError, OSError) as exc:
                self.log.warning("outputs_fetch_failed", error=str(exc))
                verdict = self.caught or Verdict(  # caught: its ComfyUI restarted meanwhile
                    "requeue",
                    p.ErrorInfo(
                        code="outputs_unavailable",
                        message=f"could not fetch outputs: {exc}",
                        retryable=True,
                    ),
                )
        elif outcome.status == "lost" and self.on_lost is not None:
            self.on_lost(outcome.reason)
        self.log.info(
            "job_outcome", status=outcome.status, reason=outcome.reason, outputs=len(files)
        )
        verdict = with_comfy_frames(verdict, outcome, self.comfy_end)
        report = Report(
            instance_id=self.job.instance_id,
            prompt_id=self.prompt_id,
            finish=p.Finish(
                agent_id=self.coord.agent_id,
                job_id=self.job.job_id,
                attempt=self.job.attempt,
                outcome=verdict.outcome,  # type: ignore[arg-type]
                outputs=files,
                error=verdict.error,
                spend_retry=verdict.spend_retry,
                timings=outcome.timings,
                vram_peak_mb=self.vram_peak_mb,
                profile=profile_of(outcome.timings, outcome.cached, self.job.workflow),
            ),
        )
        return report

    async def _keep(self, report: Report) -> bool:
        """Keep `report` in the outbox (and the outputs it made in the files ledger); from then
        on the outbox, not ComfyUI, holds the attempt."""
        try:
            await asyncio.to_thread(self._put, report)
        except OSError as exc:  # disk trouble: the report is still sent, only not durably
            self.log.error("outbox_write_failed", error=str(exc))
            return False
        self.state.remove(*self.key)
        return True

    def _keep_now(self, report: Report) -> None:
        """`_keep`, blocking: the agent stops meanwhile."""
        try:
            self._put(report)
            self.state.remove(*self.key)
        except OSError as exc:
            self.log.error("outbox_write_failed", error=str(exc))

    def _put(self, report: Report) -> None:
        if self.files is not None and self.made.outputs:
            try:
                self.files.record(self.job.job_id, self.job.attempt, self.made)
            except OSError as exc:  # the files stay in ComfyUI's folder; the job goes on
                self.log.warning("comfy_files_record_failed", error=str(exc))
        self.outbox.put(report)

    async def _deliver(self, report: Report) -> None:
        """Send the report until the coordinator acknowledges it; a refusal (4xx, not stale)
        or unreadable spooled outputs hand the attempt back, so the job is retried or fails now
        instead of sitting RUNNING until its timeout."""
        try:
            await self._send(report)
            return
        except Refused as exc:
            if exc.stale:
                self.log.info("job_dropped", reason=exc.error.get("message"))
                return
            self.log.error("job_refused", status=exc.status, error=exc.error)
            message = str(exc.error.get("message", exc))[:1000]
            if exc.error.get("field"):
                message = f"{exc.error['field']}: {message}"
            back = given_back(
                report, "report_refused", f"coordinator refused the agent's report: {message}"
            )
        except OSError as exc:
            self.log.error("outputs_unreadable", error=str(exc))
            back = given_back(report, "outputs_unavailable", f"spooled outputs unreadable: {exc}")
        await self._keep(back)
        try:
            await self._send(back)
        except Refused as exc:
            self.log.error("job_give_back_failed", error=str(exc))

    async def _send(self, report: Report) -> None:
        limit = min(self.coord.inline_output_bytes, self.config.inline_output_bytes)
        spool, budget = self.outbox.folder(*self.key), self.config.inline_report_bytes
        ack = await send_finish(self.coord, spool, report.finish, self.chunk_size, limit, budget)
        self.log.info("job_finished", outcome=report.finish.outcome, status=ack.status)


def given_back(report: Report, code: str, message: str) -> Report:
    """The report that hands an attempt back (retryable, no outputs) in place of `report`."""
    finish = msgspec.structs.replace(
        report.finish,
        outcome="requeue",
        outputs=[],
        error=p.ErrorInfo(code=code, message=message, retryable=True),
    )
    return msgspec.structs.replace(report, finish=finish)

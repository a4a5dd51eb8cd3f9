"""A protocol-level test agent: speaks the real agent protocol (msgpack over HTTP), no ComfyUI."""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import aiohttp
import msgspec

from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p

T = TypeVar("T")


class ProtocolError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ProtocolAgent:
    def __init__(
        self,
        session: aiohttp.ClientSession | Any,
        base: str,
        agent_id: str,
        *,
        gpus: list[tuple[str, int]] = (("Sim GPU", 24576),),  # type: ignore[assignment]
        labels: dict[str, str] | None = None,
        models: list[str] | None = None,
        node_classes: list[str] | None = None,
        cpu_instances: int = 0,  # CPU-only ComfyUI instances, after one per GPU
    ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.agent_id = agent_id
        self.labels = labels or {}
        self.models = models or []
        self.node_classes = node_classes
        self.gpus = [
            p.GpuInfo(index=i, name=n, vram_total_mb=v, vram_free_mb=v)
            for i, (n, v) in enumerate(gpus)
        ]
        self.instances = [
            p.InstanceInfo(instance_id=str(i), gpu_index=i) for i in range(len(self.gpus))
        ] + [p.InstanceInfo(instance_id=f"cpu{i}", gpu_index=None) for i in range(cpu_instances)]
        self.host = p.HostInfo(
            hostname=agent_id, cpu_count=8, ram_total_mb=64000, ram_available_mb=60000
        )
        # what it holds, as a real agent reports it: leased jobs until their finish is answered
        self.held: dict[str, p.RunningJob] = {}
        self.instance_id = ""  # the agent process, as Register.instance_id ("": an old agent)

    async def call(self, path: str, msg: Any, reply: type[T]) -> T:
        async with self.session.post(
            f"{self.base}/agent/v1/{path}",
            data=codec.encode(msg),
            headers={"Content-Type": codec.MSGPACK, "Accept": codec.MSGPACK},
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise ProtocolError(resp.status, _parse(body, resp.content_type))
            return codec.decode(body, reply)

    async def register(self, running: list[p.RunningJob] | None = None) -> p.RegisterReply:
        """Register reporting `running` (default: what it holds); an explicit list replaces
        what it holds (a restarted agent holds only what it reports)."""
        if running is not None:
            self.held = {r.job_id: r for r in running}
        reply = await self.call(
            "register",
            p.Register(
                agent_id=self.agent_id,
                version="test",
                host=self.host,
                gpus=self.gpus,
                instances=self.instances,
                labels=self.labels,
                running=list(self.held.values()),
                models=self.models,
                node_classes=self.node_classes,
                instance_id=self.instance_id,
            ),
            p.RegisterReply,
        )
        self._forget(reply.drop)
        return reply

    async def heartbeat(self, running: list[p.RunningJob] | None = None) -> p.HeartbeatReply:
        """Heartbeat reporting `running` (default: what it holds)."""
        reply = await self.call(
            "heartbeat",
            p.Heartbeat(
                agent_id=self.agent_id,
                host=self.host,
                gpus=self.gpus,
                instances=self.instances,
                running=list(self.held.values()) if running is None else running,
            ),
            p.HeartbeatReply,
        )
        self._forget(reply.drop)
        return reply

    def _forget(self, refs: list[p.JobRef]) -> None:
        for ref in refs:
            held = self.held.get(ref.job_id)
            if held is not None and held.attempt == ref.attempt:
                del self.held[ref.job_id]

    async def lease(
        self,
        wait_s: float = 2.0,
        free: dict[str, int] | None = None,
        finishing: list[p.JobRef] | None = None,
    ) -> p.LeaseReply:
        room = free if free is not None else {i.instance_id: 1 for i in self.instances}
        msg = p.LeaseRequest(
            agent_id=self.agent_id, free=room, wait_s=wait_s, finishing=finishing or []
        )
        reply = await self.call("lease", msg, p.LeaseReply)
        for job in reply.jobs:
            self.held[job.job_id] = p.RunningJob(
                job_id=job.job_id, attempt=job.attempt, instance_id=job.instance_id
            )
        return reply

    def started_msg(self, job: p.Assignment, prompt_id: str = "prompt-1") -> p.Started:
        """The Started report of `job` (it now holds the job as started)."""
        self.held[job.job_id] = p.RunningJob(
            job_id=job.job_id,
            attempt=job.attempt,
            instance_id=job.instance_id,
            prompt_id=prompt_id,
            started=True,
        )
        return p.Started(
            agent_id=self.agent_id, job_id=job.job_id, attempt=job.attempt, prompt_id=prompt_id
        )

    async def started(self, job: p.Assignment, prompt_id: str = "prompt-1") -> p.Ack:
        return await self.call("started", self.started_msg(job, prompt_id), p.Ack)

    async def events(self, job: p.Assignment, events: list[p.JobEvent]) -> p.Ack:
        return await self.call(
            "events",
            p.Events(agent_id=self.agent_id, job_id=job.job_id, attempt=job.attempt, events=events),
            p.Ack,
        )

    async def upload(
        self, job: p.Assignment, name: str, data: bytes, chunk: int = 1 << 20
    ) -> p.OutputFile:
        sha = hashlib.sha256(data).hexdigest()
        offset = 0
        while True:
            part = data[offset : offset + chunk]
            async with self.session.put(
                f"{self.base}/agent/v1/jobs/{job.job_id}/outputs/{name}",
                params={
                    "agent_id": self.agent_id,
                    "attempt": str(job.attempt),
                    "offset": str(offset),
                    "size": str(len(data)),
                    "sha256": sha,
                },
                data=part,
                headers={"Accept": codec.MSGPACK},
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ProtocolError(resp.status, _parse(body, resp.content_type))
                state = codec.decode(body, p.UploadState)
            offset = state.received
            if state.complete:
                break
        return p.OutputFile(name=name, size=len(data), sha256=sha, content_type="image/png")

    async def finish(
        self,
        job: p.Assignment,
        outcome: str = "completed",
        outputs: list[p.OutputFile] | None = None,
        error: p.ErrorInfo | None = None,
        spend_retry: bool = True,
        **extra: Any,
    ) -> p.Ack:
        ref = p.JobRef(job_id=job.job_id, attempt=job.attempt)
        try:
            ack = await self._finish(job, outcome, outputs, error, spend_retry, **extra)
        except ProtocolError as exc:
            if exc.status == 409:  # stale: a real agent drops the attempt
                self._forget([ref])
            raise
        self._forget([ref])
        return ack

    async def _finish(
        self,
        job: p.Assignment,
        outcome: str,
        outputs: list[p.OutputFile] | None,
        error: p.ErrorInfo | None,
        spend_retry: bool,
        **extra: Any,
    ) -> p.Ack:
        msg = self.finish_msg(job, outcome, outputs, error, spend_retry, **extra)
        return await self.call("finish", msg, p.Ack)

    def finish_msg(
        self,
        job: p.Assignment | p.JobRef,
        outcome: str = "completed",
        outputs: list[p.OutputFile] | None = None,
        error: p.ErrorInfo | None = None,
        spend_retry: bool = True,
        **extra: Any,
    ) -> p.Finish:
        return p.Finish(
            agent_id=self.agent_id,
            job_id=job.job_id,
            attempt=job.attempt,
            outcome=outcome,  # type: ignore[arg-type]
            outputs=outputs or [],
            error=error,
            spend_retry=spend_retry,
            **extra,
        )

    async def reports(self, reports: list[p.Report]) -> p.ReportsReply:
        """Several reports in one request (POST agent/v1/reports); a finish answered (or
        refused as stale) lets its job go, as a real agent does."""
        reply = await self.call(
            "reports", p.Reports(agent_id=self.agent_id, reports=reports), p.ReportsReply
        )
        for report, ack in zip(reports, reply.acks, strict=True):
            done = ack.ack is not None or (ack.error is not None and ack.error.status == 409)
            if report.finish is not None and done:
                self._forget([p.JobRef(job_id=report.finish.job_id, attempt=report.finish.attempt)])
        return reply

    async def run_one(self, wait_s: float = 5.0, data: bytes = b"png-bytes") -> p.Assignment:
        """Lease one job, start it, upload one output, complete it."""
        reply = await self.lease(wait_s)
        assert reply.jobs, "no job leased"
        job = reply.jobs[0]
        await self.started(job)
        out = await self.upload(job, "out_00001_.png", data)
        await self.finish(job, outputs=[out])
        return job


def _parse(body: bytes, ctype: str) -> Any:
    try:
        if ctype == codec.MSGPACK:
            return msgspec.msgpack.decode(body)
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode(errors="replace")

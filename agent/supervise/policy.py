"""The healing policy for managed ComfyUIs (process and docker alike): a pure step function.

`step(health, observation, policy)` returns the instance's next `Health` and the actions the
shell must take (start, restart, kill, warm up, free memory). No clock, no I/O, no randomness:
the observation carries the time and a uniform number for the backoff jitter.

Phases: `starting` (spawned, waiting for HTTP) -> `warming` (inventory re-read, warm-up
workflow) -> `ready` (takes jobs) -> back to `starting` on a restart. A start that fails (the
instance exits, never answers within `start_timeout_s`, or its warm-up fails) goes to `backoff`
for min(backoff_max_s, backoff_base_s * 2^(n-1)), shortened by up to `backoff_jitter` of itself;
after `unhealthy_after` failed starts in a row the instance is reported unhealthy until one
start succeeds.

A ready instance is restarted at once when it exits (`exited`), when its HTTP stays silent for
`http_silent_s` (`hung_http`), or when a prompt it lists as running has had no event for
`stall_s` (`hung_prompt`). It is restarted between jobs (no new jobs meanwhile) when a prompt
finished per /history while the WebSocket stayed silent (`ws_silent`), when idle memory stays
above a limit after POST /free (`leak_vram` / `leak_ram`), or every `restart_every_n_jobs`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from comfyfleet.agent.config import AgentConfig

Phase = Literal["stopped", "starting", "warming", "ready", "backoff"]
ActionKind = Literal["start", "restart", "kill", "warm_up", "free"]

# restarts caused by the job that was running: it is blamed (see caught.py)
BREAKING = frozenset({"exited", "hung_http", "hung_prompt"})
# restarts that wait until the instance is idle
BETWEEN_JOBS = frozenset({"ws_silent", "leak_vram", "leak_ram", "every_n_jobs"})
# restarts after a start that did not succeed
START_FAILURES = frozenset({"start_failed", "start_timeout", "warmup_failed"})
REASONS = BREAKING | BETWEEN_JOBS | START_FAILURES


@dataclass(frozen=True, slots=True)
class HealPolicy:
    http_silent_s: float = 30.0
    stall_s: float = 600.0
    ws_silent: bool = True
    leak_vram_mb: int = 0  # 0: not checked
    leak_ram_mb: int = 0
    restart_every_n_jobs: int = 0
    start_timeout_s: float = 300.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    backoff_jitter: float = 0.25  # a delay is shortened by up to this fraction of itself
    unhealthy_after: int = 3
    stable_s: float = 10.0  # an exit this soon after ready, with no job running, is a failed start
    free_settle_s: float = 1.0  # after POST /free, measure again this much later
    breaks_to_fail: int = 2  # a job that crashed or hung an instance this often fails

    @classmethod
    def from_config(cls, c: AgentConfig) -> HealPolicy:
        return cls(
            http_silent_s=c.heal_http_silent_s,
            stall_s=c.heal_stall_s,
            ws_silent=c.heal_ws_silent,
            leak_vram_mb=c.heal_leak_vram_mb,
            leak_ram_mb=c.heal_leak_ram_mb,
            restart_every_n_jobs=c.restart_every_n_jobs,
            start_timeout_s=c.start_timeout_s,
            backoff_base_s=c.backoff_base_s,
            backoff_max_s=c.backoff_max_s,
            unhealthy_after=max(1, c.unhealthy_after_starts),
        )

    @property
    def checks_leaks(self) -> bool:
        return self.leak_vram_mb > 0 or self.leak_ram_mb > 0


@dataclass(frozen=True, slots=True)
class Observation:
    """What the shell saw of one instance just now."""

    now: float
    exited: str | None = None  # the process/container is gone: how ("exit code 1", ...)
    http_ok: bool = False  # it answered HTTP this time
    busy: bool = False  # jobs of this agent are on it (queued in it or running)
    running_job: str | None = None  # the job whose prompt executes now (blamed if it breaks)
    stalled_job: str | None = None  # listed running, no event for stall_s
    ws_silent: bool = False  # a prompt finished per /history while the WebSocket heard nothing
    jobs_ended: int = 0  # jobs that ended on it since the last observation
    vram_mb: int | None = None  # idle: VRAM it holds (None: not measured)
    ram_mb: int | None = None  # idle: RAM it holds
    warmed: bool | None = None  # the asked-for warm-up: True done, False failed, None not yet
    warm_error: str = ""
    jitter: float = 0.5  # uniform in [0, 1)


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: str = ""  # restart / start after a failure: why (one of REASONS)
    detail: str = ""
    culprit: str | None = None  # restart: the job blamed for it


@dataclass(frozen=True, slots=True)
class Health:
    phase: Phase = "stopped"
    since: float = 0.0  # when the phase began
    http_ok_at: float = 0.0  # last HTTP answer while ready
    failed_starts: int = 0  # in a row
    unhealthy: bool = False
    retry_at: float = 0.0  # backoff: start again then
    pending: str | None = None  # ready: restart once idle, for this reason
    pending_detail: str = ""
    check_due: bool = False  # a job ended: measure idle memory
    freed_at: float | None = None  # POST /free sent; measure again after free_settle_s
    jobs_done: int = 0  # since it became ready
    up_since: float | None = None
    last_reason: str | None = None
    last_detail: str = ""

    @property
    def accepting(self) -> bool:
        """May take jobs: ready, no restart waiting, no leak check under way."""
        return self.phase == "ready" and self.pending is None and self.freed_at is None

    @property
    def state(self) -> str:
        """What the agent reports: starting, warming, ready, restart_pending, backoff,
        unhealthy (K failed starts, until one succeeds), stopped."""
        if self.unhealthy:
            return "unhealthy"
        if self.phase == "ready" and (self.pending is not None or self.freed_at is not None):
            return "restart_pending" if self.pending is not None else "checking_memory"
        return self.phase


def adopted(now: float) -> Health:
    """An instance found running after an agent restart: checked like a fresh start."""
    return Health(phase="starting", since=now)


def backoff_s(failed_starts: int, p: HealPolicy, jitter: float) -> float:
    """Capped exponential: base * 2^(n-1), at most max, shortened by up to `backoff_jitter`."""
    exp = min(max(failed_starts - 1, 0), 60)
    delay = min(p.backoff_max_s, p.backoff_base_s * (2.0**exp))
    return max(0.0, delay * (1.0 - p.backoff_jitter * min(max(jitter, 0.0), 1.0)))


def step(h: Health, o: Observation, p: HealPolicy) -> tuple[Health, tuple[Action, ...]]:
    now = o.now
    if h.phase == "stopped":
        return _starting(h, now), (Action("start"),)
    if h.phase == "backoff":
        if now >= h.retry_at:
            return _starting(h, now), (Action("start", h.last_reason or "", h.last_detail),)
        return h, ()
    if o.exited is not None:
        if h.phase == "ready" and (
            o.running_job is not None or h.up_since is None or now - h.up_since >= p.stable_s
        ):
            return _restart(h, now, "exited", o.exited, o.running_job)
        return _failed_start(h, o, p, "start_failed", o.exited, kill=False)
    if h.phase == "starting":
        if o.http_ok:
            return dataclasses.replace(h, phase="warming", since=now), (Action("warm_up"),)
        if now - h.since > p.start_timeout_s:
            detail = f"no HTTP answer within {p.start_timeout_s:g} s"
            return _failed_start(h, o, p, "start_timeout", detail, kill=True)
        return h, ()
    if h.phase == "warming":
        if o.warmed is True:
            return _ready(h, now), ()
        if o.warmed is False:
            return _failed_start(h, o, p, "warmup_failed", o.warm_error, kill=True)
        if now - h.since > p.start_timeout_s:
            detail = f"warm-up not done within {p.start_timeout_s:g} s"
            return _failed_start(h, o, p, "start_timeout", detail, kill=True)
        return h, ()
    return _while_ready(h, o, p)


def _while_ready(h: Health, o: Observation, p: HealPolicy) -> tuple[Health, tuple[Action, ...]]:
    now = o.now
    if o.http_ok:
        h = dataclasses.replace(h, http_ok_at=now)
    if now - h.http_ok_at >= p.http_silent_s:
        detail = f"HTTP silent for {now - h.http_ok_at:.0f} s"
        return _restart(h, now, "hung_http", detail, o.running_job)
    if o.stalled_job is not None:
        detail = f"a running prompt had no event for {p.stall_s:g} s"
        return _restart(h, now, "hung_prompt", detail, o.stalled_job)
    h = dataclasses.replace(
        h,
        jobs_done=h.jobs_done + o.jobs_ended,
        check_due=h.check_due or (o.jobs_ended > 0 and p.checks_leaks),
    )
    actions: tuple[Action, ...] = ()
    if h.pending is None and p.ws_silent and o.ws_silent:
        detail = "a prompt finished per /history while the WebSocket stayed silent"
        h = dataclasses.replace(h, pending="ws_silent", pending_detail=detail)
    if h.pending is None and 0 < p.restart_every_n_jobs <= h.jobs_done:
        detail = f"{h.jobs_done} jobs since the last start"
        h = dataclasses.replace(h, pending="every_n_jobs", pending_detail=detail)
    if h.pending is None and h.check_due:
        h, actions = _leak_check(h, o, p)
    if h.pending is not None and not o.busy:
        return _restart(h, now, h.pending, h.pending_detail, None)
    return h, actions


def _leak_check(h: Health, o: Observation, p: HealPolicy) -> tuple[Health, tuple[Action, ...]]:
    if o.busy:  # wait until idle; a job that came meanwhile voids a started check
        return dataclasses.replace(h, freed_at=None), ()
    if o.vram_mb is None and o.ram_mb is None:
        return h, ()
    over = _over(o, p)
    if h.freed_at is None:
        if over is None:
            return dataclasses.replace(h, check_due=False), ()
        return dataclasses.replace(h, freed_at=o.now), (Action("free"),)
    if o.now - h.freed_at < p.free_settle_s:
        return h, ()
    h = dataclasses.replace(h, freed_at=None, check_due=False)
    if over is None:
        return h, ()
    reason, detail = over
    return dataclasses.replace(h, pending=reason, pending_detail=detail), ()


def _over(o: Observation, p: HealPolicy) -> tuple[str, str] | None:
    after = "idle after POST /free"
    if p.leak_vram_mb > 0 and o.vram_mb is not None and o.vram_mb > p.leak_vram_mb:
        return "leak_vram", f"holds {o.vram_mb} MB VRAM {after} (limit {p.leak_vram_mb})"
    if p.leak_ram_mb > 0 and o.ram_mb is not None and o.ram_mb > p.leak_ram_mb:
        return "leak_ram", f"holds {o.ram_mb} MB RAM {after} (limit {p.leak_ram_mb})"
    return None


def _starting(h: Health, now: float) -> Health:
    return dataclasses.replace(
        h,
        phase="starting",
        since=now,
        pending=None,
        pending_detail="",
        check_due=False,
        freed_at=None,
        up_since=None,
        jobs_done=0,
    )


def _ready(h: Health, now: float) -> Health:
    return dataclasses.replace(
        h,
        phase="ready",
        since=now,
        http_ok_at=now,
        failed_starts=0,
        unhealthy=False,
        up_since=now,
    )


def _restart(
    h: Health, now: float, reason: str, detail: str, culprit: str | None
) -> tuple[Health, tuple[Action, ...]]:
    h = dataclasses.replace(_starting(h, now), last_reason=reason, last_detail=detail)
    return h, (Action("restart", reason, detail, culprit if reason in BREAKING else None),)


def _failed_start(
    h: Health, o: Observation, p: HealPolicy, reason: str, detail: str, *, kill: bool
) -> tuple[Health, tuple[Action, ...]]:
    n = h.failed_starts + 1
    h = dataclasses.replace(
        _starting(h, o.now),
        phase="backoff",
        failed_starts=n,
        unhealthy=h.unhealthy or n >= p.unhealthy_after,
        retry_at=o.now + backoff_s(n, p, o.jitter),
        last_reason=reason,
        last_detail=detail,
    )
    return h, ((Action("kill", reason, detail),) if kill else ())

"""The healing policy (agent/instances/policy.py): examples of each rule, and properties over
random observation sequences."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.agent.supervise.policy import (
    BETWEEN_JOBS,
    BREAKING,
    REASONS,
    Action,
    HealPolicy,
    Health,
    Observation,
    backoff_s,
    step,
)

P = HealPolicy(
    http_silent_s=5.0,
    stall_s=10.0,
    leak_vram_mb=4000,
    leak_ram_mb=0,
    restart_every_n_jobs=0,
    start_timeout_s=30.0,
    backoff_base_s=1.0,
    backoff_max_s=8.0,
    backoff_jitter=0.25,
    unhealthy_after=3,
    stable_s=10.0,
)


def ready_at(t: float, **kw: object) -> Health:
    return dataclasses.replace(Health(phase="ready", since=t, http_ok_at=t, up_since=t), **kw)


def run(h: Health, *obs: Observation, p: HealPolicy = P) -> tuple[Health, list[Action]]:
    out: list[Action] = []
    for o in obs:
        h, acts = step(h, o, p)
        out.extend(acts)
    return h, out


def test_first_start_then_ready_after_http_and_warm_up() -> None:
    h, acts = run(Health(), Observation(now=0))
    assert acts == [Action("start")] and h.phase == "starting" and not h.accepting
    h, acts = run(h, Observation(now=1, http_ok=True))
    assert acts == [Action("warm_up")] and h.phase == "warming"
    h, acts = run(h, Observation(now=2, http_ok=True, warmed=True))
    assert acts == [] and h.accepting and h.up_since == 2 and h.state == "ready"


def test_exit_of_a_ready_instance_restarts_at_once_blaming_the_running_job() -> None:
    h, acts = run(ready_at(0), Observation(now=1, exited="killed by SIGKILL", running_job="j1"))
    assert acts == [Action("restart", "exited", "killed by SIGKILL", "j1")]
    assert h.phase == "starting" and h.last_reason == "exited" and h.failed_starts == 0


def test_http_silence_is_a_hang() -> None:
    h = ready_at(0)
    h, acts = run(h, Observation(now=3, http_ok=True), Observation(now=7), Observation(now=7.9))
    assert acts == []
    h, acts = run(h, Observation(now=8.1, running_job="j"))
    assert [a.reason for a in acts] == ["hung_http"] and acts[0].culprit == "j"


def test_a_stalled_prompt_is_a_hang_blaming_that_job() -> None:
    h, acts = run(ready_at(0), Observation(now=1, http_ok=True, busy=True, stalled_job="j2"))
    assert acts == [Action("restart", "hung_prompt", acts[0].detail, "j2")]


def test_ws_silence_restarts_only_once_idle_and_closes_the_gate_meanwhile() -> None:
    h, acts = run(ready_at(0), Observation(now=1, http_ok=True, busy=True, ws_silent=True))
    assert acts == [] and h.pending == "ws_silent" and not h.accepting
    assert h.state == "restart_pending"
    h, acts = run(h, Observation(now=2, http_ok=True, busy=True))
    assert acts == []
    h, acts = run(h, Observation(now=3, http_ok=True, busy=False))
    assert acts == [Action("restart", "ws_silent", acts[0].detail, None)]


def test_leak_check_frees_then_restarts_only_if_memory_stays_high() -> None:
    h, _ = run(ready_at(0), Observation(now=1, http_ok=True, jobs_ended=1, busy=True))
    assert h.check_due
    h, acts = run(h, Observation(now=2, http_ok=True, vram_mb=9000))
    assert acts == [Action("free")] and not h.accepting
    h, acts = run(h, Observation(now=2.5, http_ok=True, vram_mb=9000))  # not settled yet
    assert acts == []
    h, acts = run(h, Observation(now=3.1, http_ok=True, vram_mb=100))  # /free cured it
    assert acts == [] and h.accepting and not h.check_due
    h, _ = run(h, Observation(now=4, http_ok=True, jobs_ended=1))
    h, acts = run(h, Observation(now=5, http_ok=True, vram_mb=9000))
    h, acts = run(h, Observation(now=6.5, http_ok=True, vram_mb=5000))
    assert [a.reason for a in acts] == ["leak_vram"] and "5000 MB" in acts[0].detail


def test_no_leak_check_without_a_limit() -> None:
    p = dataclasses.replace(P, leak_vram_mb=0)
    h, acts = run(ready_at(0), Observation(now=1, http_ok=True, jobs_ended=1), p=p)
    h, acts = run(h, Observation(now=2, http_ok=True, vram_mb=99999), p=p)
    assert acts == [] and h.accepting


def test_every_n_jobs() -> None:
    p = dataclasses.replace(P, restart_every_n_jobs=3, leak_vram_mb=0)
    h, acts = run(
        ready_at(0),
        Observation(now=1, http_ok=True, jobs_ended=2, busy=True),
        Observation(now=2, http_ok=True, jobs_ended=1, busy=True),
        p=p,
    )
    assert acts == [] and h.pending == "every_n_jobs"
    h, acts = run(h, Observation(now=3, http_ok=True), p=p)
    assert [a.reason for a in acts] == ["every_n_jobs"] and h.jobs_done == 0


def test_crash_loop_backs_off_then_is_unhealthy_then_recovers() -> None:
    h, _ = run(Health(), Observation(now=0))
    delays = []
    t = 0.0
    for i in range(1, 5):
        t += 0.1
        h, acts = run(h, Observation(now=t, exited="exit code 3", jitter=0.0))
        assert h.phase == "backoff" and h.failed_starts == i and acts == []
        assert h.unhealthy == (i >= 3) and not h.accepting
        delays.append(h.retry_at - t)
        h, acts = run(h, Observation(now=h.retry_at - 0.01))
        assert acts == []
        t = h.retry_at
        h, acts = run(h, Observation(now=t))
        assert acts == [Action("start", "start_failed", "exit code 3")]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert h.state == "unhealthy"
    h, _ = run(h, Observation(now=t + 1, http_ok=True), Observation(now=t + 2, warmed=True))
    assert h.accepting and not h.unhealthy and h.failed_starts == 0


def test_start_timeout_and_failed_warm_up_kill_and_back_off() -> None:
    h, _ = run(Health(), Observation(now=0))
    h, acts = run(h, Observation(now=31))
    assert [a.kind for a in acts] == ["kill"] and h.last_reason == "start_timeout"
    h, _ = run(h, Observation(now=h.retry_at), Observation(now=h.retry_at + 1, http_ok=True))
    h, acts = run(h, Observation(now=h.since + 1, warmed=False, warm_error="boom"))
    assert acts == [Action("kill", "warmup_failed", "boom")] and h.failed_starts == 2


def test_early_exit_of_an_idle_instance_counts_as_a_failed_start() -> None:
    h, acts = run(ready_at(0), Observation(now=2, exited="exit code 1"))
    assert acts == [] and h.phase == "backoff" and h.failed_starts == 1
    h, acts = run(ready_at(0), Observation(now=20, exited="exit code 1"))
    assert [a.reason for a in acts] == ["exited"] and acts[0].culprit is None


@given(
    n=st.integers(min_value=1, max_value=200),
    jitter=st.floats(min_value=0, max_value=1),
    base=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=0.01, max_value=600),
    spread=st.floats(min_value=0, max_value=1),
)
def test_backoff_is_capped_and_jitter_only_shortens(
    n: int, jitter: float, base: float, cap: float, spread: float
) -> None:
    p = HealPolicy(backoff_base_s=base, backoff_max_s=cap, backoff_jitter=spread)
    d = backoff_s(n, p, jitter)
    plain = min(cap, base * 2.0 ** (n - 1))
    assert 0 <= d <= cap + 1e-9
    assert plain * (1 - spread) - 1e-9 <= d <= plain + 1e-9
    assert backoff_s(n, p, 0.0) <= backoff_s(n + 1, p, 0.0) + 1e-9


observations = st.builds(
    Observation,
    now=st.floats(min_value=0, max_value=5),  # a step forward, added below
    exited=st.sampled_from([None, None, None, "exit code 1"]),
    http_ok=st.booleans(),
    busy=st.booleans(),
    running_job=st.sampled_from([None, "a", "b"]),
    stalled_job=st.sampled_from([None, None, None, "a"]),
    ws_silent=st.booleans(),
    jobs_ended=st.integers(min_value=0, max_value=2),
    vram_mb=st.sampled_from([None, 0, 3000, 9000]),
    ram_mb=st.sampled_from([None, 0, 9000]),
    warmed=st.sampled_from([None, None, True, False]),
    jitter=st.floats(min_value=0, max_value=0.999),
)


@settings(max_examples=300)
@given(st.lists(observations, min_size=1, max_size=60))
def test_invariants_over_random_histories(seq: list[Observation]) -> None:
    p = dataclasses.replace(P, restart_every_n_jobs=4, leak_ram_mb=5000)
    h = Health()
    t = 0.0
    for raw in seq:
        t += raw.now
        o = dataclasses.replace(raw, now=t)
        before = h
        h, acts = step(h, o, p)
        for a in acts:
            assert a.kind in ("start", "restart", "kill", "warm_up", "free")
            if a.kind == "restart":
                assert a.reason in REASONS
                assert a.culprit is None or a.reason in BREAKING
            if a.reason in BETWEEN_JOBS:
                assert not o.busy  # between-jobs restarts never catch a running job
        # an exit never leaves the instance taking jobs
        if o.exited is not None and before.phase not in ("stopped", "backoff"):
            assert not h.accepting
        # only a ready instance accepts; a pending restart or unhealthiness closes the gate
        assert h.accepting == (h.phase == "ready" and h.pending is None and h.freed_at is None)
        if h.unhealthy:
            assert not h.accepting and h.state == "unhealthy"
        if h.phase == "backoff":
            assert h.retry_at >= t and h.retry_at - t <= p.backoff_max_s + 1e-9
        assert h.unhealthy == (h.failed_starts >= p.unhealthy_after)
        if h.phase == "ready" and before.phase != "ready":
            assert h.failed_starts == 0 and not h.unhealthy

"""Text rendering for the terminal commands: pure functions from API data to strings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from comfyfleet.client.models import Agent, Job

BAR_WIDTH = 24


def bar(fraction: float | None, width: int = BAR_WIDTH) -> str:
    if fraction is None:
        return "." * width
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "#" * filled + "." * (width - filled)


def vram_bar(total: int, used: int, reserved: int, width: int = 20) -> str:
    """`#` measured use, `=` reserved by comfyfleet jobs beyond that use, `.` free."""
    if total <= 0:
        return " " * width
    used = max(0, min(total, used))
    extra = max(0, min(total - used, reserved - used))
    u = round(used / total * width)
    r = min(width - u, round(extra / total * width))
    return "#" * u + "=" * r + "." * (width - u - r)


def clock(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta(
    fraction: float | None, elapsed: float | None, expected_s: float | None = None
) -> float | None:
    """Remaining time: what the coordinator's learned duration for this workflow leaves, or the
    rate so far when that is longer (or the only thing known); None with nothing to go by."""
    if elapsed is None or elapsed <= 0:
        return expected_s
    if fraction is not None and fraction >= 1.0:
        return 0.0
    learned = max(0.0, expected_s - elapsed) if expected_s is not None else None
    by_rate = (
        elapsed * (1.0 - fraction) / fraction if fraction is not None and fraction > 0.0 else None
    )
    known = [t for t in (learned, by_rate) if t is not None]
    return max(known) if known else None


def progress_line(
    status: str,
    progress: dict[str, Any],
    running_since: float | None,
    now: float,
    agent_id: str | None = None,
    expected_s: float | None = None,
) -> str:
    """One line: bar, percent, node and step, elapsed and remaining time (`expected_s`: the
    coordinator's learned duration of this workflow on this GPU model, when it has one)."""
    fraction = progress.get("fraction")
    if status == "COMPLETED":
        fraction = 1.0
    elapsed = now - running_since if running_since else None
    pct = "  -%" if fraction is None else f"{fraction * 100:3.0f}%"
    node = progress.get("node_type") or progress.get("node") or ""
    step = ""
    if progress.get("max"):
        step = f" {progress.get('value') or 0:g}/{progress['max']:g}"
    where = f" on {agent_id}" if agent_id else ""
    node_part = f"  {node}{step}" if node else ""
    return (
        f"[{bar(fraction)}] {pct} {status:9s}{where}{node_part}  "
        f"elapsed {clock(elapsed)}  eta {clock(eta(fraction, elapsed, expected_s))}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def age(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, seconds):.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def jobs_table(jobs: Sequence[Job], now: float) -> str:
    rows = []
    for j in jobs:
        note = ""
        if j.status == "QUEUED" and j.pending_reason:
            note = j.pending_reason
        elif j.error:
            note = f"{j.error.get('code', '')}: {j.error.get('message', '')}"
        elif j.outputs:
            note = ", ".join(o.name for o in j.outputs)
        fraction = 1.0 if j.status == "COMPLETED" else j.progress.fraction
        pct = "" if fraction is None else f"{fraction * 100:.0f}%"
        rows.append([j.id, j.status, pct, j.agent_id or "-", age(now - j.created_at), note[:70]])
    return table(["ID", "STATUS", "PROGRESS", "AGENT", "AGE", "NOTE"], rows)


def health(a: Agent) -> str:
    """`ok`, or what is wrong: silent for a while, ComfyUI instances down."""
    if a.status == "LOST":
        return f"silent {age(a.seen_ago_s)}"
    down = [str(i.get("instance_id")) for i in a.instances if not i.get("healthy", True)]
    if down:
        return f"comfyui down: {','.join(down)}"[:30]
    return "ok" if a.instances or a.gpus else "no instances"


def agents_table(agents: Sequence[Agent]) -> str:
    rows = []
    for a in agents:
        host = a.host
        ram_used = host.ram_total_mb - host.ram_available_mb
        first = [
            a.id,
            a.status,
            health(a),
            str(len(a.jobs)),
            f"{host.cpu_count} ({host.load_1m or 0:.1f})",
            f"{ram_used / 1024:.1f}/{host.ram_total_mb / 1024:.1f}G",
        ]
        if not a.gpus:
            rows.append([*first, "-", "", ""])
        for i, g in enumerate(a.gpus):
            lead = first if i == 0 else [""] * len(first)
            rows.append(
                [
                    *lead,
                    f"{g.index}: {g.name}"[:34],
                    f"[{vram_bar(g.vram_total_mb, g.vram_used_mb, g.vram_reserved_mb)}]",
                    f"used {g.vram_used_mb / 1024:.1f} res {g.vram_reserved_mb / 1024:.1f} "
                    f"free {g.vram_free_mb / 1024:.1f} of {g.vram_total_mb / 1024:.1f}G",
                ]
            )
    return table(
        [
            "AGENT",
            "STATUS",
            "HEALTH",
            "JOBS",
            "CPU (LOAD)",
            "RAM",
            "GPU",
            "VRAM #used =reserved",
            "",
        ],
        rows,
    )


def instances_table(agents: Sequence[Agent], now: float) -> str:
    """Each ComfyUI instance: how it runs, its state, uptime and restarts (managed ones)."""
    rows = []
    for a in agents:
        for i in a.instances:
            kind = str(i.get("kind") or "external")
            state = i.get("state") or ("ready" if i.get("healthy", True) else "down")
            up = i.get("up_since")
            counts = i.get("restart_counts") or {}
            last = i.get("last_restart_reason")
            recent = i.get("restarts") or []
            when = f" {age(now - recent[-1]['at'])} ago" if last and recent else ""
            rows.append(
                [
                    a.id,
                    str(i.get("instance_id")),
                    kind,
                    str(state),
                    age(now - up) if isinstance(up, int | float) and state == "ready" else "-",
                    str(sum(counts.values())) if kind != "external" else "-",
                    f"{last}{when}" if last else "-",
                ]
            )
    return table(["AGENT", "INSTANCE", "KIND", "STATE", "UPTIME", "RESTARTS", "LAST RESTART"], rows)


def job_detail(j: Job) -> str:
    lines = [
        f"job      {j.id}",
        f"status   {j.status}  attempt {j.attempt}"
        + (f"  on {j.agent_id}" if j.agent_id else "")
        + ("  (cancel requested)" if j.cancel_requested and j.status not in ("CANCELLED",) else ""),
        f"priority {j.priority}  vram {j.resources.get('vram_mb', 0)} MB  "
        f"retries {j.retries_used}/{j.max_retries}",
    ]
    if j.status == "QUEUED" and j.pending_reason:
        lines.append(f"waiting  {j.pending_reason}")
    if j.status in ("RUNNING", "ASSIGNED"):
        p = j.progress
        lines.append(
            f"progress [{bar(p.fraction)}] "
            f"{'' if p.fraction is None else f'{p.fraction * 100:.0f}%'} "
            f"{p.node_type or ''}"
        )
    if j.error:
        node = (
            f" (node {j.error.get('node_id')} {j.error.get('node_type')})"
            if j.error.get("node_id")
            else ""
        )
        lines.append(f"error    {j.error.get('code')}: {j.error.get('message')}{node}")
    for o in j.outputs:
        lines.append(f"output   {o.name}  {o.size} bytes  {o.url}")
    if j.history:
        lines.append("history")
        for t in j.history:
            when = datetime.fromtimestamp(t.at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            lines.append(
                f"  {when}Z  {(t.from_status or ''):>9s} -> {t.to_status:9s} "
                f"#{t.attempt} {t.agent_id or '':12s} {t.reason}"
            )
    return "\n".join(lines)

"""The outbox keeps a finished attempt's report and outputs on disk until acknowledged."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.agent.outbox import REPORT_FILE, Outbox, Report
from comfyfleet.shared import names
from comfyfleet.shared import protocol as p

pytestmark = pytest.mark.timeout(30)


def report(job_id: str, attempt: int, outputs: list[p.OutputFile] | None = None) -> Report:
    return Report(
        instance_id="0",
        prompt_id=f"cf-{job_id}",
        finish=p.Finish(
            agent_id="a1",
            job_id=job_id,
            attempt=attempt,
            outcome="completed" if outputs else "requeue",
            outputs=outputs or [],
        ),
    )


def test_reports_survive_a_new_outbox_and_go_when_removed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "spool")
    name = names.stored_name("(v2)/猫_00001_.png")
    folder = box.folder("job-1", 2)
    folder.mkdir(parents=True)
    (folder / name).write_bytes(b"png")
    out = p.OutputFile(name=name, original="(v2)/猫_00001_.png", size=3, sha256="0" * 64)
    box.put(report("job-1", 2, [out]))
    box.put(report("job-2", 1))
    again = Outbox(tmp_path / "spool").load()  # what a restarted agent finds
    assert {r.key for r in again} == {("job-1", 2), ("job-2", 1)}
    kept = next(r for r in again if r.key == ("job-1", 2))
    assert kept.finish.outputs == [out] and kept.prompt_id == "cf-job-1"
    box.remove("job-1", 2)
    assert [r.key for r in box.load()] == [("job-2", 1)]


def test_sweep_removes_only_folders_nobody_refers_to(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "spool")
    box.put(report("kept-report", 1))
    for job, attempt in [("half-fetched", 1), ("still-held", 3)]:
        box.folder(job, attempt).mkdir(parents=True)
        (box.folder(job, attempt) / "x.png").write_bytes(b"x")
    assert box.sweep({("still-held", 3)}) == 1
    left = sorted(f.name for f in (tmp_path / "spool").iterdir())
    assert left == ["kept-report-1", "still-held-3"]


def test_an_unreadable_report_is_skipped_not_fatal(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "spool")
    box.put(report("good", 1))
    bad = box.folder("bad", 1)
    bad.mkdir(parents=True)
    (bad / REPORT_FILE).write_text("{not json")
    assert [r.key for r in box.load()] == [("good", 1)]

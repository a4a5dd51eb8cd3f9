"""Print what the resource probe sees on this machine, as JSON. Run by hand on a GPU host:

    .venv/bin/python tests/gpu/check_nvml.py [--comfyui http://127.0.0.1:8188 ...]

Not a pytest module (its name does not start with `test_`). Exit status 0 when NVML opened and
found at least one GPU, 1 otherwise, so a GPU machine's check can be scripted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import urllib.request
from typing import Any

import structlog

from comfyfleet.agent.probe import (
    NvmlProbe,
    ResourceProbe,
    gpus_from_system_stats,
    host_snapshot,
)


def _fetch_stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base.rstrip("/") + "/system_stats", timeout=5) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--comfyui", action="append", default=[], help="base URL of a ComfyUI to also ask"
    )
    args = parser.parse_args(argv)
    # Logs to stderr so stdout stays one JSON document.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    report: dict[str, Any] = {"host": dataclasses.asdict(host_snapshot())}

    started = time.perf_counter()
    probe, reason = NvmlProbe.try_open()
    report["nvml_open"] = {"ok": probe is not None, "reason": reason}
    report["nvml_open_ms"] = round((time.perf_counter() - started) * 1000, 3)
    nvml_gpus: list[dict[str, Any]] = []
    if probe is not None:
        started = time.perf_counter()
        nvml_gpus = [dataclasses.asdict(g) for g in probe.gpus()]
        report["nvml_gpus_ms"] = round((time.perf_counter() - started) * 1000, 3)
        probe.close()
    report["nvml_gpus"] = nvml_gpus

    stats_by_instance: dict[str, dict[str, Any]] = {}
    for i, base in enumerate(args.comfyui):
        try:
            stats_by_instance[f"{i}:{base}"] = _fetch_stats(base)
        except Exception as exc:  # a diagnostic script: show the fault, keep going
            report.setdefault("comfyui_errors", {})[base] = repr(exc)
    report["comfyui_gpus"] = {
        key: [dataclasses.asdict(g) for g in gpus_from_system_stats(stats, i)]
        for i, (key, stats) in enumerate(sorted(stats_by_instance.items()))
    }

    rp = ResourceProbe("auto")
    report["resource_probe"] = {
        "source": rp.source,
        "reason": rp.reason,
        "gpus": [dataclasses.asdict(g) for g in rp.gpus(stats_by_instance)],
    }
    rp.close()

    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if nvml_gpus else 1


if __name__ == "__main__":
    sys.exit(main())

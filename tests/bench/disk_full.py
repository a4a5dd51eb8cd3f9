"""A real full disk under the coordinator (needs root: it mounts a tiny tmpfs as the data dir).

`sudo .venv/bin/python -m tests.bench.disk_full` starts a coordinator on a 1 MiB tmpfs, submits
until the store is full (expects 503 + Retry-After, reads still served), grows the tmpfs (space
returns: submissions accepted again), SIGKILLs and restarts the coordinator, and checks that
every accepted job is there and `PRAGMA integrity_check` is ok. The automated tests inject the
same SQLite errors with max_page_count / query_only (tests/api/test_overload.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import procs
from tests.helpers.fleet import txt2img


def post(url: str, body: bytes) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (mounts a tmpfs); the same faults are injected in tests/api")
        return 2
    with tempfile.TemporaryDirectory(prefix="comfyfleet-diskfull-") as tmp:
        mnt = Path(tmp) / "data"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
        port = procs.free_port()
        url = f"http://127.0.0.1:{port}"
        coord = procs.coordinator(mnt, Path(tmp), port).start()
        try:
            body = json.dumps({"workflow": txt2img(512, 512, prefix="x" * 2000)}).encode()
            accepted: list[str] = []
            while True:
                status, headers, data = post(f"{url}/v1/jobs", body)
                if status != 201:
                    break
                accepted.append(data["id"])
            print(
                f"accepted {len(accepted)} jobs, then HTTP {status} "
                f"Retry-After={headers.get('Retry-After')}: {data['error']['message']}"
            )
            assert status == 503 and headers.get("Retry-After"), data
            with urllib.request.urlopen(f"{url}/v1/jobs?limit=5", timeout=10) as r:
                print(f"GET /v1/jobs while full: HTTP {r.status}")
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
            status, _, data = post(f"{url}/v1/jobs", body)
            print(f"after the disk grew: HTTP {status}")
            assert status == 201, data
            accepted.append(data["id"])
            coord.kill()
            coord = procs.coordinator(mnt, Path(tmp), port).start()
            missing = []
            for job_id in accepted:
                with urllib.request.urlopen(f"{url}/v1/jobs/{job_id}", timeout=10) as r:
                    if json.loads(r.read())["status"] != "QUEUED":
                        missing.append(job_id)
            coord.kill()
            conn = sqlite3.connect(mnt / "coordinator.db")
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            conn.close()
            print(
                f"after SIGKILL + restart: {len(accepted) - len(missing)}/{len(accepted)} "
                f"accepted jobs QUEUED, integrity_check: {check}"
            )
            return 0 if not missing and check == "ok" else 1
        finally:
            coord.kill()
            subprocess.run(["umount", str(mnt)], check=False)


if __name__ == "__main__":
    sys.exit(main())

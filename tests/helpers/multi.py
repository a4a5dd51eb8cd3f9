"""Several coordinators on one PostgreSQL store, as real processes on 127.0.0.1, with simulated
ComfyUIs and agents that know every coordinator (the fleet of tests/helpers/fleet.py, grown)."""

from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from tests.chaos.checker import JobEvidence
from tests.helpers import procs
from tests.helpers.fleet import Fleet
from tests.helpers.postgres import Cluster

# Short timings, so that a failover takes a couple of seconds in a test.
FAST = [
    "--heartbeat-interval",
    "0.5",
    "--restart-grace",
    "3",
    "--set",
    "leader_lease_s=2",
    "--set",
    "leader_renew_s=0.4",
    "--set",
    "leader_poll_s=0.2",
    "--set",
    "orders_poll_s=0.5",
]


class MultiFleet(Fleet):
    """`count` coordinators on `store_url`, sharing one output directory."""

    def __init__(
        self, tmp: Path, store_url: str, count: int, coordinator_args: list[str] | None = None
    ) -> None:
        self.tmp = tmp
        self.store_url = store_url
        self.coord_args = coordinator_args if coordinator_args is not None else FAST
        self.ports = [procs.free_port() for _ in range(count)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.url = ",".join(self.urls)  # what agents are given: every coordinator
        self.outputs = tmp / "outputs"
        self.coords = [self._coordinator_at(i) for i in range(count)]
        self.coord = self.coords[0]
        self.sims: dict[str, procs.Proc] = {}
        self.sim_urls: dict[str, str] = {}
        self.agents: dict[str, procs.Proc] = {}

    def _coordinator_at(self, i: int) -> procs.Proc:
        url = self.urls[i]
        return procs.Proc(
            f"coordinator-{i}",
            [
                "coordinator",
                "--listen",
                f"127.0.0.1:{self.ports[i]}",
                "--data-dir",
                str(self.tmp / f"coord-{i}"),
                "--store",
                self.store_url,
                "--set",
                f"advertise_url={url}",
                "--set",
                f"outputs_root={self.outputs}",
                *self.coord_args,
            ],
            self.tmp,
            f"{url}/healthz",
        )

    def start_coordinator(self, i: int | None = None) -> None:
        for k in range(len(self.coords)) if i is None else [i]:
            if not self.coords[k].alive:
                self.coords[k] = self._coordinator_at(k).start()

    def health(self, i: int) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.urls[i]}/healthz", timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None

    def leader(self, wait_s: float = 30.0, other_than: int | None = None) -> int:
        """The index of the coordinator that leads, once exactly one live coordinator says so."""
        deadline = time.monotonic() + wait_s
        while True:
            leading = [
                i
                for i in range(len(self.coords))
                if self.coords[i].alive
                and i != other_than
                and (self.health(i) or {}).get("role") == "leader"
            ]
            if len(leading) == 1:
                return leading[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no single leader within {wait_s} s: {leading}")
            time.sleep(0.1)

    def stop(self) -> None:
        for p in [*self.agents.values(), *self.sims.values(), *self.coords]:
            p.signal(signal.SIGCONT)
            p.kill(signal.SIGKILL)

    def logs(self) -> str:
        parts = []
        for p in [*self.coords, *self.sims.values(), *self.agents.values()]:
            parts.append(f"===== {p.name}\n{p.log()[-4000:]}")
        return "\n".join(parts)


@contextlib.contextmanager
def running_multi_fleet(
    tmp: Path, store_url: str, coordinators: int, sims: dict[str, list[str]]
) -> Iterator[MultiFleet]:
    """Coordinators on `store_url`, and a simulator with `sims[name]` as its arguments and an
    agent of the same name for each; stopped at the end, their logs printed on a failure."""
    fleet = MultiFleet(tmp, store_url, coordinators)
    try:
        fleet.start_coordinator()
        for name, extra in sims.items():
            fleet.add_sim(name, 24576, *extra)
            fleet.add_agent(name, name)
        yield fleet
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        fleet.stop()


def terms(store_url: str) -> list[tuple[int, str, str, float]]:
    """Every leader term so far: (epoch, holder, url, began_at on the server's clock)."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT epoch, holder, url, extract(epoch FROM began_at) FROM comfyfleet_terms "
            "ORDER BY epoch"
        ).fetchall()
    return [(int(e), str(h), str(u), float(b)) for e, h, u, b in rows]


def fencing_violations(
    histories: dict[str, list[dict[str, Any]]], began: dict[int, float]
) -> list[str]:
    """Moves written under an epoch after the next epoch began, or epochs going backwards in a
    job's history: what a paused ex-leader writing after the takeover would leave behind."""
    out = []
    for job_id, history in histories.items():
        last = 0
        for step, entry in enumerate(history):
            epoch = entry.get("epoch")
            if epoch is None:
                continue
            if epoch < last:
                out.append(f"{job_id}: step {step} has epoch {epoch} after epoch {last}")
            last = max(last, epoch)
            nxt = min((t for e, t in began.items() if e > epoch), default=None)
            if nxt is not None and entry["at"] > nxt:
                out.append(
                    f"{job_id}: step {step} ({entry['event']}) of epoch {epoch} at "
                    f"{entry['at']:.3f}, after epoch {epoch + 1} began at {nxt:.3f}"
                )
    return out


async def evidence(
    job: Callable[[str], Awaitable[dict[str, Any] | None]],
    session: aiohttp.ClientSession,
    fleet: MultiFleet,
    accepted: Mapping[str, tuple[int, int]],
) -> dict[str, JobEvidence]:
    """What the checker needs of each accepted job: its JSON (from any coordinator), its outputs
    as served, and the attempt directories in the shared output directory."""
    out: dict[str, JobEvidence] = {}
    for job_id, size in accepted.items():
        found = await job(job_id)
        ev = JobEvidence(found, size)
        for o in (
            (found or {}).get("outputs", []) if (found or {}).get("status") == "COMPLETED" else []
        ):
            for url in fleet.urls:
                try:
                    async with session.get(f"{url}{o['url']}") as r:
                        if r.status == 200:
                            ev.downloads[o["name"]] = await r.read()
                            break
                except aiohttp.ClientError:
                    continue
        jdir = fleet.outputs / job_id
        if jdir.is_dir():
            for adir in jdir.iterdir():
                ev.attempt_dirs[int(adir.name)] = {f.name for f in adir.iterdir()}
        out[job_id] = ev
    return out


def terminate_backends_of(cluster: Cluster, pid: int) -> int:
    """pg_terminate_backend on every connection of the process `pid` (matched by client port)."""
    import psutil

    ports = {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == cluster.port
    }
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = ANY(%s)",
            (list(ports),),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)

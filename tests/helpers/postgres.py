"""A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` + `pg_ctl` in a temp dir.

PostgreSQL refuses to run as root, so as root the cluster runs as the unprivileged user `nobody`
(its temp dir is made theirs); as anyone else it runs as that user. It listens on 127.0.0.1 only,
on a free port, with trust authentication (nothing but this machine can reach it), and without
fsync: a test kills coordinators, never this cluster, so its durability is not what is tested.

Debian's `postgresql` package provides the binaries (`make postgres` installs it as root).
When they are missing, `PostgresMissing` says so and how to get them: tests fail, never skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from tests.helpers.procs import free_port

RUN_AS = "nobody"  # when we are root
SUPERUSER = "postgres"
START_TIMEOUT_S = 60
HOW_TO_INSTALL = (
    "run `make postgres` as root (it installs Debian's postgresql), or `apt-get install postgresql`"
)


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries cannot be found or the cluster cannot start."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl (Debian's layout), else the
    directory of an `initdb` on PATH."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: _version_key(p.parent.name),
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    raise PostgresMissing(f"PostgreSQL's initdb and pg_ctl were not found: {HOW_TO_INSTALL}")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@dataclass
class Cluster:
    bin_dir: Path
    root: Path  # the temp dir: data/, the socket and the server log
    port: int
    user: str | None  # the OS user the server runs as; None: as we are

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres", search_path: str | None = None) -> str:
        """A postgresql:// URL of this cluster (as the superuser, no password: trust)."""
        query = f"?options={quote(f'-c search_path={search_path}')}" if search_path else ""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}{query}"

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10)

    def new_schema(self) -> str:
        """An empty schema in the `postgres` database: a fresh store for each test."""
        name = f"s_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return name

    def drop_schemas(self, names: list[str]) -> None:
        with self.admin() as conn:
            for name in names:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )

    def new_database(self) -> str:
        name = f"db_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        result = subprocess.run(
            command,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)},
            user=self.user,
            group=_group_of(self.user),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresMissing(
                f"{tool} failed (exit {result.returncode}): {result.stderr.strip()}\n{self.log()}"
            )


def _group_of(user: str | None) -> int | None:
    return pwd.getpwnam(user).pw_gid if user is not None else None


def start_cluster() -> Cluster:
    """initdb + pg_ctl start on a free loopback port; the caller stops it (`Cluster.stop`)."""
    bin_dir = find_bin_dir()
    user = RUN_AS if os.geteuid() == 0 else None
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as nobody.
    root = Path(tempfile.mkdtemp(prefix="comfyfleet-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(bin_dir, root, free_port(), user)
    try:
        cluster._run(
            "initdb",
            "-D",
            str(cluster.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={cluster.port}",
                f"-c unix_socket_directories={root}",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        cluster._run(
            "pg_ctl",
            "-D",
            str(cluster.data_dir),
            "-l",
            str(cluster.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()

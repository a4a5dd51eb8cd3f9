"""A private Docker engine for the docker-mode tests, and an image that runs the simulator.

`dockerd` (Debian's docker.io; `make test` installs it when missing and run as root) is started
with its own data root, exec root and socket in a temporary folder, no bridge and no iptables
(containers use host networking), and the overlay2 storage driver, or vfs where the kernel
refuses overlay mounts (vfs copies the image for every container: slow, but works anywhere). Nothing
can be pulled here, so the image is made with `docker import` from a root filesystem assembled
from this machine: its Python (binary, shared libraries, standard library), the third-party
packages the simulator imports, and comfyfleet itself laid out as installed (package-dir of
pyproject.toml), plus /bin/sh for start scripts.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "comfyfleet-sim:test"
SITE = "/opt/site"
_SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages"}


class EngineUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def docker_engine(workdir: Path) -> Iterator[tuple[Any, str]]:
    """(docker client, DOCKER_HOST url) of a dockerd running until the block ends: overlay2
    where the kernel allows it (fast container creation), else vfs."""
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise EngineUnavailable(
            "dockerd not installed: `make test` installs Debian's docker.io when run as root"
        )
    if os.geteuid() != 0:
        raise EngineUnavailable("dockerd needs root here (the tests start their own engine)")
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"unix://{workdir / 'docker.sock'}"
    errors = []
    for driver in ("overlay2", "vfs"):
        proc = _start(dockerd, workdir, url, driver)
        try:
            client = _connect(proc, workdir, url)
        except EngineUnavailable as exc:
            errors.append(f"{driver}: {exc}")
            _stop(proc, workdir)
            continue
        except BaseException:
            _stop(proc, workdir)
            raise
        try:
            yield client, url
        finally:
            with contextlib.suppress(Exception):
                for c in client.containers.list(all=True):
                    c.remove(force=True)
            client.close()
            _stop(proc, workdir)
        return
    raise EngineUnavailable("; ".join(errors))


def _start(dockerd: str, workdir: Path, url: str, driver: str) -> subprocess.Popen[bytes]:
    with open(workdir / "dockerd.log", "ab") as log:
        return subprocess.Popen(
            [
                dockerd,
                "--data-root", str(workdir / f"data-{driver}"),
                "--exec-root", str(workdir / "exec"),
                "--pidfile", str(workdir / "dockerd.pid"),
                "--host", url,
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                f"--storage-driver={driver}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _connect(proc: subprocess.Popen[bytes], workdir: Path, url: str) -> Any:
    import docker

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise EngineUnavailable(
                f"dockerd exited with {proc.returncode}: {_tail(workdir / 'dockerd.log')}"
            )
        try:
            return docker.DockerClient(base_url=url, timeout=120)  # connects: asks the version
        except docker.errors.DockerException:
            if time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"dockerd did not answer in 60 s: {_tail(workdir / 'dockerd.log')}"
                ) from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes], workdir: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    _unmount_under(workdir)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def _unmount_under(workdir: Path) -> None:
    """dockerd leaves mounts (netns, overlay of vfs layers) that block removing the folder."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    ours = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for target in sorted((t for t in ours if t.startswith(str(workdir))), reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


# --- the image -----------------------------------------------------------------------------


def build_sim_image(client: Any, workdir: Path) -> str:
    """Assemble the root filesystem, `docker import` it as IMAGE; returns the tag."""
    rootfs = workdir / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    _python(rootfs)
    _site_packages(rootfs)
    _comfyfleet(rootfs / SITE.lstrip("/"))
    for tool in ("/bin/sh", "/bin/cat", "/bin/sleep"):
        _copy_binary(Path(tool), rootfs)
    (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (rootfs / "opt/ComfyUI").mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    buf.seek(0)
    python = f"{Path(sys.base_prefix)}/bin/python3"
    client.api.import_image(
        src=buf,
        repository=IMAGE.split(":")[0],
        tag=IMAGE.split(":")[1],
        changes=[
            f"ENV PYTHONPATH={SITE}",
            f"ENV PATH={Path(python).parent}:/usr/bin:/bin",
            "ENV PYTHONDONTWRITEBYTECODE=1",
            "WORKDIR /opt/ComfyUI",
        ],
    )
    shutil.rmtree(rootfs)
    return IMAGE


def _python(rootfs: Path) -> None:
    base = Path(sys.base_prefix)
    python = Path(os.path.realpath(f"{base}/bin/python3"))
    _copy_binary(python, rootfs)
    bindir = rootfs / str(base).lstrip("/") / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        link = bindir / name
        if not link.exists():
            link.symlink_to(python.name)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dest = rootfs / str(stdlib).lstrip("/")
    shutil.copytree(
        stdlib,
        dest,
        ignore=lambda d, names: [
            n
            for n in names
            if n == "__pycache__"
            or (Path(d) == stdlib and (n in _SKIP_STDLIB or n.startswith("config-")))
        ],
        symlinks=True,
    )
    for so in (dest / "lib-dynload").glob("*.so"):
        _copy_libs(so, rootfs)


def _site_packages(rootfs: Path) -> None:
    """comfyfleet's runtime dependencies (pyproject `dependencies`, transitively), whole."""
    from importlib import metadata

    from packaging.requirements import Requirement

    dest = rootfs / SITE.lstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    todo = ["comfyfleet"]
    while todo:
        dist = metadata.distribution(todo.pop())
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        if name == "comfyfleet":
            continue  # laid out from the source folders instead
        for f in dist.files or []:
            src = Path(str(dist.locate_file(f)))
            if f.parts[0].endswith(".dist-info") or "__pycache__" in f.parts or not src.is_file():
                continue
            target = dest / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    for so in dest.rglob("*.so*"):
        _copy_libs(so, rootfs)


def _comfyfleet(site: Path) -> None:
    """comfyfleet laid out as installed: each package-dir of pyproject.toml under site/."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in conf["package-dir"].items():
        target = site / package.replace(".", "/")
        shutil.copytree(ROOT / folder, target, dirs_exist_ok=True, ignore=_no_pycache)


def _no_pycache(_d: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def _copy_binary(path: Path, rootfs: Path) -> None:
    dest = rootfs / str(path).lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(path), dest)
    _copy_libs(path, rootfs)


def _copy_libs(path: Path, rootfs: Path) -> None:
    done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    for lib in re.findall(r"(/\S+\.so[^\s]*)", done.stdout):
        dest = rootfs / lib.lstrip("/")
        if dest.exists() or lib.startswith(str(rootfs)):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)

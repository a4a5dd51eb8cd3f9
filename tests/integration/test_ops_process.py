"""Operations, with real processes on 127.0.0.1: TLS with a certificate made here, keys and
tenants end to end, SIGHUP key reload, secure-by-default refusal, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import procs
from tests.helpers.fleet import txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "comfyfleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_https(url: str, context: ssl.SSLContext, proc: procs.Proc, timeout: float = 20) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.alive, proc.log()
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise TimeoutError(url)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[procs.Proc]]:
    running: list[procs.Proc] = []
    yield running
    for proc in running:
        proc.kill(signal.SIGKILL)


async def test_tls_and_keys_end_to_end(
    tmp_path: Path, started: list[procs.Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_path, cert_path, key_path = make_certs(tmp_path)
    data = tmp_path / "coord"
    made = [
        cli("keys", "create", "--tenant", "acme", "--data-dir", str(data)),
        cli("keys", "create", "--tenant", "beta", "--data-dir", str(data)),
        cli("keys", "create", "--agent", "--agent-id", "gpu-a", "--data-dir", str(data)),
    ]
    assert all(m.returncode == 0 for m in made), [m.stderr for m in made]
    acme, beta, token = (m.stdout.strip() for m in made)

    port = procs.free_port()
    url = f"https://127.0.0.1:{port}"
    coord = procs.Proc(
        "coordinator",
        [
            "coordinator",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data),
            "--tls-cert",
            str(cert_path),
            "--tls-key",
            str(key_path),
            "--heartbeat-interval",
            "0.5",
        ],
        tmp_path,
        f"{url}/healthz",
    ).start(wait=False)
    started.append(coord)
    trust = ssl.create_default_context(cafile=str(ca_path))
    wait_https(f"{url}/healthz", trust, coord)

    sim_port = procs.free_port()
    sim = procs.Proc(
        "sim",
        ["comfyui-sim", "--listen", f"127.0.0.1:{sim_port}", "--data-dir", str(tmp_path / "sim")],
        tmp_path,
        f"http://127.0.0.1:{sim_port}/system_stats",
    ).start()
    started.append(sim)
    monkeypatch.setenv("COMFYFLEET_AGENT_TOKEN", token)  # the agent reads its token from env
    agent = procs.Proc(
        "agent",
        [
            "agent",
            "--coordinator",
            url,
            "--ca-file",
            str(ca_path),
            "--comfyui",
            f"http://127.0.0.1:{sim_port}",
            "--agent-id",
            "gpu-a",
            "--data-dir",
            str(tmp_path / "agent"),
        ],
        tmp_path,
        "",
    ).start(wait=False)
    monkeypatch.delenv("COMFYFLEET_AGENT_TOKEN")
    started.append(agent)

    def auth(cred: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {cred}"}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
        resp = await http.post(
            f"{url}/v1/jobs", json={"workflow": txt2img(64, 64, steps=2)}, headers=auth(acme)
        )
        assert resp.status == 201, await resp.text()
        job_id = (await resp.json())["id"]
        job: dict[str, Any] = {}
        for _ in range(300):
            job = await (await http.get(f"{url}/v1/jobs/{job_id}", headers=auth(acme))).json()
            if job["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                break
            await asyncio.sleep(0.1)
        assert job["status"] == "COMPLETED", (job, agent.log())
        name = job["outputs"][0]["name"]
        out = await http.get(f"{url}/v1/jobs/{job_id}/outputs/{name}", headers=auth(acme))
        assert out.status == 200 and (await out.read()).startswith(b"\x89PNG")
        other = await http.get(f"{url}/v1/jobs/{job_id}", headers=auth(beta))
        assert other.status == 404
        assert (await http.get(f"{url}/v1/jobs")).status == 401

        # A key created while the coordinator runs works after SIGHUP (systemctl reload).
        late = cli("keys", "create", "--tenant", "late", "--data-dir", str(data)).stdout.strip()
        assert (await http.get(f"{url}/v1/jobs", headers=auth(late))).status == 401
        coord.signal(signal.SIGHUP)
        for _ in range(50):
            if (await http.get(f"{url}/v1/jobs", headers=auth(late))).status == 200:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the new key was not picked up after SIGHUP")

    # Clients that do not trust the CA, or speak plain HTTP, get nowhere.
    async with aiohttp.ClientSession() as untrusting:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await untrusting.get(f"{url}/healthz")
        with pytest.raises(aiohttp.ClientError):
            await untrusting.get(f"http://127.0.0.1:{port}/healthz")

    # The CLI verifies the certificate too: with the CA it gets through, without it says why.
    checked = cli("check", "--coordinator", url, "--ca-file", str(ca_path))
    assert checked.returncode == 0 and "TLS verified" in checked.stdout, checked.stderr
    refused = cli("check", "--coordinator", url)
    assert refused.returncode == 2 and "certificate is not trusted" in refused.stderr
    monkeypatch.setenv("COMFYFLEET_API_KEY", token)
    wrong_side = cli("check", "--coordinator", url, "--ca-file", str(ca_path))
    monkeypatch.delenv("COMFYFLEET_API_KEY")
    assert wrong_side.returncode == 2 and "HTTP 403" in wrong_side.stderr

    coord.kill(signal.SIGTERM)
    agent.kill(signal.SIGTERM)
    logs = coord.log() + agent.log() + "".join(m.stderr for m in made) + wrong_side.stderr
    assert "coordinator_listening" in logs and "https://" in logs
    for secret in (acme, beta, token, late):
        assert secret not in logs
        assert secret.split("_", 2)[2] not in logs


def test_sighup_never_switches_authentication_off(
    tmp_path: Path, started: list[procs.Proc]
) -> None:
    """Deleting the keys file, revoking its last key or breaking it, then SIGHUP: anonymous
    requests (/metrics included) stay refused and the keys loaded before keep working; each
    failed reload is logged. A good file afterwards is picked up, revocations included."""
    import urllib.error
    import urllib.request

    data = tmp_path / "coord"
    admin = cli("keys", "create", "--admin", "--data-dir", str(data)).stdout.strip()
    keys = data / "keys.json"
    coord = procs.coordinator(data, tmp_path).start()
    started.append(coord)
    url = coord.url  # type: ignore[attr-defined]

    def status(path: str, cred: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {cred}"} if cred else {}
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"{url}{path}", headers=headers), timeout=5
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def hup_and_wait(event: str) -> None:
        before = coord.log().count(event)
        coord.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while coord.log().count(event) == before:
            assert time.monotonic() < deadline, f"no {event} after SIGHUP:\n{coord.log()}"
            time.sleep(0.05)

    assert status("/metrics") == 401 and status("/metrics", admin) == 200
    good = keys.read_text()
    for damage in ("delete", "revoke_last", "malformed"):
        if damage == "delete":
            keys.unlink()
        elif damage == "revoke_last":
            keys.write_text('{"keys": []}')
        else:
            keys.write_text("{not json")
        hup_and_wait("keys_reload_failed")
        assert coord.alive
        for path in ("/metrics", "/v1/jobs", "/v1/agents"):
            assert status(path) == 401, (damage, path)
        assert status("/metrics", admin) == 200, damage
    assert "keeping the 1 loaded before" in coord.log()
    keys.write_text(good)
    newer = cli("keys", "create", "--admin", "--data-dir", str(data)).stdout.strip()
    revoked = cli("keys", "revoke", admin.split("_")[1], "--data-dir", str(data))
    assert revoked.returncode == 0, revoked.stderr
    hup_and_wait("keys_reloaded")
    assert status("/metrics", newer) == 200 and status("/metrics", admin) == 401
    assert status("/metrics") == 401


def test_no_keys_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    done = cli(
        "coordinator",
        "--listen",
        f"0.0.0.0:{procs.free_port()}",
        "--data-dir",
        str(tmp_path / "coord"),
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "keys create" in done.stderr and "Traceback" not in done.stderr


def test_bad_config_is_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text('data_dir = "x"\nheartbeat_intervall_s = 2\n')
    done = cli("coordinator", "--config", str(config))
    assert done.returncode == 2 and "heartbeat_intervall_s: unknown key" in done.stderr
    config.write_text('data_dir = "x"\nport = "eighty"\n')
    done = cli("coordinator", "--config", str(config))
    assert done.returncode == 2 and "port: expected an integer" in done.stderr


def slow_submission(url: str) -> tuple[socket.socket, bytes]:
    """A job submission whose headers the app has dispatched (it answered 100 Continue) and
    whose body is still to send: the open socket and the body."""
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"workflow": txt2img(64, 64)}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
        b"\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    interim = b""
    while b"\r\n\r\n" not in interim:  # the request has been dispatched to the app
        interim += sock.recv(1)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    return sock, body


def test_sigterm_finishes_the_request_in_flight_and_commits(
    tmp_path: Path, started: list[procs.Proc]
) -> None:
    """SIGTERM arrives while a submission's body is still on the wire: the coordinator stops
    accepting, finishes that request (201 after commit), exits 0, and the job is there after a
    restart."""
    data = tmp_path / "coord"
    coord = procs.coordinator(data, tmp_path).start()
    started.append(coord)
    sock, body = slow_submission(coord.url)  # type: ignore[attr-defined]
    sock.sendall(body[:20])
    time.sleep(0.3)  # the handler is now reading the body
    coord.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert coord.alive, "the coordinator quit with a request in flight"
    sock.sendall(body[20:])
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    job_id = json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"]
    assert coord.proc is not None and coord.proc.wait(20) == 0, coord.log()

    again = procs.coordinator(data, tmp_path).start()
    started.append(again)
    import urllib.request

    with urllib.request.urlopen(f"{again.url}/v1/jobs/{job_id}", timeout=5) as resp:  # type: ignore[attr-defined]
        assert json.loads(resp.read())["id"] == job_id


def test_sigterm_does_not_wait_for_a_lease_long_poll(
    tmp_path: Path, started: list[procs.Proc]
) -> None:
    """An idle coordinator with an agent in its lease long-poll exits at once on SIGTERM: the
    long poll is answered 503 (retry) when the stop begins instead of holding the stop until its
    wait (25 s) or the server's shutdown timeout (10 s) runs out, and no agent is declared lost
    meanwhile."""
    import threading

    coord = procs.coordinator(tmp_path / "coord", tmp_path, extra=["--heartbeat-interval", "30"])
    coord.start()
    started.append(coord)
    url = coord.url  # type: ignore[attr-defined]

    assert agent_post(url, "register", AGENT_A1, 5)[0] == 200
    answer: list[tuple[int, dict[str, Any]]] = []
    poll = threading.Thread(
        target=lambda: answer.append(
            agent_post(url, "lease", {"agent_id": "a1", "free": {"0": 1}, "wait_s": 25}, 40)
        )
    )
    poll.start()
    time.sleep(1.0)  # the lease is now waiting in the coordinator
    assert not answer
    t0 = time.monotonic()
    coord.signal(signal.SIGTERM)
    assert coord.proc is not None
    code = coord.proc.wait(30)
    took = time.monotonic() - t0
    poll.join(30)
    assert code == 0, coord.log()
    assert answer and answer[0][0] == 503, answer
    assert answer[0][1]["error"]["code"] == "stopping"
    assert took < 5.0, f"exit took {took:.1f} s: it waited for the long poll"
    assert "agent_lost" not in coord.log()


AGENT_A1 = {
    "agent_id": "a1",
    "gpus": [{"index": 0, "name": "g", "vram_total_mb": 8000, "vram_free_mb": 8000}],
    "instances": [{"instance_id": "0", "gpu_index": 0}],
}


def agent_post(
    url: str, path: str, body: dict[str, Any], timeout: float
) -> tuple[int, dict[str, Any]]:
    """One agent protocol call in JSON: (status, body)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"{url}/agent/v1/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_no_agent_is_declared_lost_while_the_coordinator_stops(
    tmp_path: Path, started: list[procs.Proc]
) -> None:
    """While a stop waits for a request in flight, agents cannot reach the coordinator (it no
    longer accepts connections): the sweeper must not declare them lost and requeue their jobs
    for that. Lost after 1.5 s of silence here; the stop lasts over 3 s."""
    coord = procs.coordinator(
        tmp_path / "coord",
        tmp_path,
        extra=["--heartbeat-interval", "0.4", "--set", "lost_grace_s=0.3"],
    ).start()
    started.append(coord)
    url = coord.url  # type: ignore[attr-defined]
    sock, body = slow_submission(url)
    assert agent_post(url, "register", AGENT_A1, 5)[0] == 200
    coord.signal(signal.SIGTERM)  # the agent's last word was just now
    time.sleep(3.0)  # twice the time after which a silent agent is lost
    sock.sendall(body)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    assert coord.proc is not None and coord.proc.wait(20) == 0, coord.log()
    assert "agent_registered" in coord.log() and "agent_lost" not in coord.log()

"""Credentials (keys file, hashing, constant-time checks) and the pure auth rules."""

from __future__ import annotations

import hmac
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator import keyring as kr
from comfyfleet.coordinator.api.auth import bearer, exposure_problem, is_loopback, refusal, rule_for
from comfyfleet.coordinator.keyring import KeyRing, KeysFileError, Principal, new_credential


def ring_with(tmp_path: Path, *specs: tuple[Any, ...]) -> tuple[KeyRing, list[str]]:
    entries = {}
    creds = []
    for kind, tenant, agent_id in specs:
        cred, entry = new_credential(
            kind,
            tenant=tenant,
            agent_id=agent_id,
            any_agent=kind == "agent" and agent_id is None,
        )
        entries[entry.id] = entry
        creds.append(cred)
    path = tmp_path / "keys.json"
    kr.write_keys(path, entries)
    return KeyRing.load(path), creds


def test_credentials_verify_to_their_principal(tmp_path: Path) -> None:
    ring, (client, admin, agent, bound) = ring_with(
        tmp_path,
        ("client", "acme", None),
        ("admin", "ops", None),
        ("agent", None, None),
        ("agent", None, "gpu-1"),
    )
    assert ring.enabled
    got = ring.verify(client)
    assert got is not None and got.kind == "client" and got.tenant == "acme" and not got.admin
    got = ring.verify(admin)
    assert got is not None and got.admin and got.sees("anyone")
    got = ring.verify(agent)
    assert got is not None and got.kind == "agent" and got.agent_id is None
    got = ring.verify(bound)
    assert got is not None and got.agent_id == "gpu-1"


def test_wrong_or_mangled_credentials_are_refused(tmp_path: Path) -> None:
    ring, (client,) = ring_with(tmp_path, ("client", "acme", None))
    prefix, key_id, secret = client.split("_", 2)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (
        f"{prefix}_{key_id}_{flipped}",
        f"cfa_{key_id}_{secret}",  # other kind letter
        f"{prefix}_{'0' * 12}_{secret}",
        client + "x",
        client[:-1],
        "",
        "Bearer",
        "x" * 5000,
    ):
        assert ring.verify(bad) is None, bad


def test_keys_file_stores_only_hashes_owner_readable(tmp_path: Path) -> None:
    _, creds = ring_with(tmp_path, ("client", "acme", None), ("agent", None, None))
    path = tmp_path / "keys.json"
    text = path.read_text()
    for cred in creds:
        assert cred not in text and cred.split("_", 2)[2] not in text
        assert kr.digest(cred) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_comparison_is_constant_time_even_for_unknown_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every verification, known id or not, well-formed or not, goes through one
    hmac.compare_digest of two equal-length digests: no early exit on a mismatch."""
    ring, (client,) = ring_with(tmp_path, ("client", "acme", None))
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(kr.hmac, "compare_digest", spy)
    probes = [client, client[:-1] + "Z", "cfc_" + "0" * 12 + "_" + "a" * 43, "garbage"]
    for probe in probes:
        ring.verify(probe)
    assert calls == [(64, 64)] * len(probes)


def test_reload_picks_up_new_and_revoked_keys(tmp_path: Path) -> None:
    ring, (first,) = ring_with(tmp_path, ("client", "acme", None))
    cred, entry = new_credential("client", tenant="beta")
    entries = kr.read_keys(ring.path)  # type: ignore[arg-type]
    first_id = first.split("_")[1]
    del entries[first_id]
    entries[entry.id] = entry
    kr.write_keys(ring.path, entries)  # type: ignore[arg-type]
    assert ring.verify(cred) is None  # not until reload
    ring.reload()
    assert ring.verify(cred) is not None and ring.verify(first) is None


@pytest.mark.parametrize("damage", ["delete", "empty", "no_keys", "malformed", "directory"])
def test_a_reload_never_leaves_a_ring_that_had_keys_without_them(
    tmp_path: Path, damage: str
) -> None:
    """Deleting the keys file, revoking its last key or breaking it keeps the keys loaded
    before (and says why): authentication never switches itself off."""
    ring, (cred,) = ring_with(tmp_path, ("admin", "ops", None))
    path = ring.path
    assert path is not None
    path.unlink()
    if damage == "empty":
        path.write_text("")
    elif damage == "no_keys":
        kr.write_keys(path, {})
    elif damage == "malformed":
        path.write_text('{"keys": [{"id": "x"}]}')
    elif damage == "directory":
        path.mkdir()
    with pytest.raises(KeysFileError) as err:
        ring.reload()
    assert err.value.field == "keys_file" and str(path) in err.value.message
    assert ring.enabled and ring.verify(cred) is not None


def test_a_ring_that_started_without_keys_may_gain_them_and_stay_empty(tmp_path: Path) -> None:
    ring = KeyRing.load(tmp_path / "keys.json")
    ring.reload()  # still no file: fine, it never had keys (and exposure_problem held at start)
    assert not ring.enabled
    cred, entry = new_credential("client", tenant="acme")
    kr.write_keys(tmp_path / "keys.json", {entry.id: entry})
    ring.reload()
    assert ring.verify(cred) is not None


def test_malformed_keys_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"id": "x"}]}')
    with pytest.raises(KeysFileError) as err:
        KeyRing.load(path)
    assert err.value.field == "keys_file"
    assert KeyRing.load(tmp_path / "absent.json").enabled is False


def test_bad_tenant_names_are_refused() -> None:
    with pytest.raises(KeysFileError):
        new_credential("client", tenant="")
    with pytest.raises(KeysFileError):
        new_credential("client", tenant="a b")


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("GET", "/healthz", "public"),
        ("GET", "/", "public"),
        ("GET", "/static/app.js", "public"),
        ("GET", "/metrics", "admin"),
        ("POST", "/v1/jobs", "client"),
        ("GET", "/v1/jobs/x/events", "client"),
        ("GET", "/v1/events", "client"),
        ("GET", "/v1/agents", "client"),
        ("GET", "/v1/agents/a1", "client"),
        ("POST", "/v1/agents/a1/drain", "admin"),
        ("POST", "/agent/v1/register", "agent"),
        ("PUT", "/agent/v1/jobs/j/outputs/x.png", "agent"),
    ],
)
def test_rule_by_path_prefix(method: str, path: str, rule: str) -> None:
    assert rule_for(method, path) == rule


@given(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), st.text(max_size=40))
def test_protected_prefixes_are_never_public(method: str, rest: str) -> None:
    assert rule_for(method, "/v1/" + rest) in ("client", "admin")
    assert rule_for(method, "/agent/v1/" + rest) == "agent"


def test_refusals_between_kinds() -> None:
    client = Principal("client", "k1", tenant="acme")
    admin = Principal("admin", "k2", tenant="ops")
    agent = Principal("agent", "k3")
    assert refusal("agent", client) and refusal("agent", admin)
    assert refusal("client", agent) and refusal("admin", agent)
    assert refusal("admin", client)
    assert refusal("client", client) is None and refusal("admin", admin) is None
    assert refusal("agent", agent) is None


def test_bearer_header_parsing() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer("Bearer") is None and bearer(None) is None


def test_no_keys_means_loopback_only(tmp_path: Path) -> None:
    empty = KeyRing(tmp_path / "keys.json")
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host) and exposure_problem(host, empty) is None
    for host in ("0.0.0.0", "::", "10.0.0.5", "gpu-head.example"):
        problem = exposure_problem(host, empty)
        assert problem is not None and "no API keys" in problem and "keys create" in problem
    ring, _ = ring_with(tmp_path, ("client", "acme", None))
    assert exposure_problem("0.0.0.0", ring) is None


def test_an_agent_token_names_its_agent_or_explicitly_any() -> None:
    with pytest.raises(KeysFileError) as err:
        new_credential("agent")  # neither: no silent fleet token
    assert err.value.field == "agent_id"
    with pytest.raises(KeysFileError):
        new_credential("agent", agent_id="gpu-1", any_agent=True)
    assert new_credential("agent", agent_id="gpu-1")[1].agent_id == "gpu-1"
    assert new_credential("agent", any_agent=True)[1].agent_id is None

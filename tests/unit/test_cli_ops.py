"""`comfyfleet config show` and `comfyfleet keys …`, run in process."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from comfyfleet.coordinator.keyring import KeyRing, digest
from comfyfleet.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("COMFYFLEET_"):
            monkeypatch.delenv(name)


def test_config_show_masks_secrets_and_prints_valid_toml(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMFYFLEET_AGENT_TOKEN", "cfg_0123456789ab_very-secret-token-value")
    monkeypatch.setenv("COMFYFLEET_COMFYUI_URLS", "http://127.0.0.1:8188,http://127.0.0.1:8189")
    code, out, _ = run(capsys, "config", "show", "--role", "agent")
    assert code == 0
    assert "very-secret-token-value" not in out
    shown = tomllib.loads(out)
    assert shown["agent_token"] == "********"
    assert shown["comfyui_urls"] == ["http://127.0.0.1:8188", "http://127.0.0.1:8189"]


def test_flags_beat_env_beat_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("port = 1000\nassign_timeout_s = 7.5\nlost_grace_s = 1.0\n")
    monkeypatch.setenv("COMFYFLEET_PORT", "2000")
    monkeypatch.setenv("COMFYFLEET_LOST_GRACE_S", "2.0")
    code, out, _ = run(
        capsys,
        "config",
        "show",
        "--role",
        "coordinator",
        "--config",
        str(config),
        "--set",
        "port=3000",
    )
    shown = tomllib.loads(out)
    assert code == 0
    assert (shown["port"], shown["lost_grace_s"], shown["assign_timeout_s"]) == (3000, 2.0, 7.5)


def test_config_errors_name_the_key_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("stall = 3\n")
    code, _, err = run(capsys, "config", "show", "--role", "agent", "--config", str(config))
    assert code == 2 and "stall: unknown key" in err and "stall_s" in err
    code, _, err = run(capsys, "config", "show", "--role", "agent", "--set", "gpu_source=cuda")
    assert code == 2 and "gpu_source" in err
    code, _, err = run(capsys, "coordinator", "--set", "port=99999")
    assert code == 2 and "port: must be 0..65535" in err
    assert "Traceback" not in err


def test_keys_create_list_revoke(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "coord"
    code, credential, err = run(
        capsys, "keys", "create", "--tenant", "acme", "--data-dir", str(data)
    )
    credential = credential.strip()
    assert code == 0 and credential.startswith("cfc_") and "shown only now" in err
    code, admin, _ = run(capsys, "keys", "create", "--admin", "--data-dir", str(data))
    code, agent, _ = run(
        capsys, "keys", "create", "--agent", "--agent-id", "gpu-1", "--data-dir", str(data)
    )
    stored = (data / "keys.json").read_text()
    for cred in (credential, admin.strip(), agent.strip()):
        assert cred not in stored and digest(cred) in stored
    ring = KeyRing.load(data / "keys.json")
    who = ring.verify(credential)
    assert who is not None and who.tenant == "acme"
    code, listing, _ = run(capsys, "keys", "list", "--data-dir", str(data))
    assert code == 0 and len(listing.splitlines()) == 3
    assert credential not in listing and digest(credential) not in listing
    key_id = credential.split("_")[1]
    assert run(capsys, "keys", "revoke", key_id, "--data-dir", str(data))[0] == 0
    assert KeyRing.load(data / "keys.json").verify(credential) is None
    code, _, err = run(capsys, "keys", "revoke", key_id, "--data-dir", str(data))
    assert code == 2 and "no key" in err


def test_keys_create_refuses_unclear_requests(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "keys", "create", "--data-dir", str(tmp_path))
    assert code == 2 and "--tenant" in err and out == ""
    code, _, err = run(
        capsys, "keys", "create", "--agent", "--tenant", "x", "--data-dir", str(tmp_path)
    )
    assert code == 2 and "no tenant" in err
    code, _, err = run(
        capsys, "keys", "create", "--tenant", "bad name", "--data-dir", str(tmp_path)
    )
    assert code == 2 and "tenant" in err


def test_agent_tokens_are_bound_to_one_agent_unless_any_agent_is_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = ["--data-dir", str(tmp_path)]
    code, out, err = run(capsys, "keys", "create", "--agent", *data)
    assert code == 2 and out == "" and "--agent-id" in err and "--any-agent" in err
    assert not (tmp_path / "keys.json").exists()
    code, bound, _ = run(capsys, "keys", "create", "--agent", "--agent-id", "gpu-1", *data)
    code2, fleet, err = run(capsys, "keys", "create", "--agent", "--any-agent", *data)
    assert code == code2 == 0 and "any agent" in err
    ring = KeyRing.load(tmp_path / "keys.json")
    one, anyone = ring.verify(bound.strip()), ring.verify(fleet.strip())
    assert one is not None and one.agent_id == "gpu-1"
    assert anyone is not None and anyone.kind == "agent" and anyone.agent_id is None
    code, _, err = run(capsys, "keys", "create", "--tenant", "acme", "--any-agent", *data)
    assert code == 2 and "go with --agent" in err
    with pytest.raises(SystemExit):  # argparse: the two are mutually exclusive
        main(["keys", "create", "--agent", "--agent-id", "a", "--any-agent", *data])


def test_the_last_key_is_not_revoked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    _, only, _ = run(capsys, "keys", "create", "--admin", *data)
    key_id = only.strip().split("_")[1]
    code, _, err = run(capsys, "keys", "revoke", key_id, *data)
    assert code == 2 and "last key" in err and "create its replacement first" in err
    assert KeyRing.load(tmp_path / "keys.json").verify(only.strip()) is not None
    _, other, _ = run(capsys, "keys", "create", "--admin", *data)
    assert run(capsys, "keys", "revoke", key_id, *data)[0] == 0
    ring = KeyRing.load(tmp_path / "keys.json")
    assert ring.verify(only.strip()) is None and ring.verify(other.strip()) is not None


def test_older_env_names_still_work_and_the_field_name_wins(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMFYFLEET_LISTEN", "127.0.0.1:9100")
    monkeypatch.setenv("COMFYFLEET_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("COMFYFLEET_RESTART_GRACE", "9")
    monkeypatch.setenv("COMFYFLEET_RESTART_GRACE_S", "11")
    code, out, _ = run(capsys, "config", "show", "--role", "coordinator")
    shown = tomllib.loads(out)
    assert code == 0
    assert (shown["port"], shown["heartbeat_interval_s"], shown["restart_grace_s"]) == (
        9100,
        2.0,
        11.0,
    )


def test_readme_quotes_the_gpus_help_as_the_cli_has_it() -> None:
    """The README's first-run path tells how to submit to a CPU-only ComfyUI, quoting `--gpus`."""
    from comfyfleet.main import build_parser

    submit = build_parser()._subparsers._group_actions[0].choices["submit"]  # type: ignore[union-attr]
    (gpus,) = [a for a in submit._actions if "--gpus" in a.option_strings]
    assert gpus.help and "CPU-only" in gpus.help
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert f'says of `--gpus`: "{gpus.help}"' in readme

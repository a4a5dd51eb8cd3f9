"""Client settings: where it connects, the key it sends, how workflow files are read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyfleet.client import (
    DEFAULT_URL,
    AsyncClient,
    ClientError,
    UIFormatWorkflow,
    resolve_api_key,
    resolve_url,
)
from comfyfleet.client.aio import load_workflow

pytestmark = pytest.mark.timeout(30)


def test_url_precedence_flag_then_env_then_default(tmp_path: Path) -> None:
    env = {"COMFYFLEET_COORDINATOR": "http://fleet:9000/", "HOME": str(tmp_path)}
    assert resolve_url("http://x:1", env) == "http://x:1"
    assert resolve_url(None, env) == "http://fleet:9000"
    assert resolve_url(None, {"HOME": str(tmp_path)}) == DEFAULT_URL == "http://127.0.0.1:8787"


def test_config_file_comes_after_flag_and_env(tmp_path: Path) -> None:
    conf = tmp_path / "home" / ".config" / "comfyfleet" / "client.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('coordinator = "http://from-file:1"\napi_key = "k-file"\n')
    env = {"HOME": str(tmp_path / "home")}
    assert resolve_url(None, env) == "http://from-file:1"
    assert resolve_api_key(None, env) == "k-file"
    assert resolve_api_key(None, {**env, "COMFYFLEET_API_KEY": "k-env"}) == "k-env"
    assert resolve_api_key("k-flag", env) == "k-flag"
    other = tmp_path / "other.toml"
    other.write_text('api_key = "k-other"\n')
    assert resolve_api_key(None, {**env, "COMFYFLEET_CLIENT_CONFIG": str(other)}) == "k-other"
    other.write_text("api_key = 5\n")
    with pytest.raises(ClientError, match="must be a string"):
        resolve_api_key(None, {"COMFYFLEET_CLIENT_CONFIG": str(other)})
    other.write_text("api_key = [\n")
    with pytest.raises(ClientError, match="not valid TOML"):
        resolve_api_key(None, {"COMFYFLEET_CLIENT_CONFIG": str(other)})
    with pytest.raises(ClientError, match="does not exist"):
        resolve_url(None, {"COMFYFLEET_CLIENT_CONFIG": str(tmp_path / "nope.toml")})


def test_api_key_is_sent_as_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_api_key(None, {"COMFYFLEET_API_KEY": "k-env"}) == "k-env"
    assert resolve_api_key("k-flag", {"COMFYFLEET_API_KEY": "k-env"}) == "k-flag"
    monkeypatch.setenv("HOME", "/nonexistent-home")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("COMFYFLEET_CLIENT_CONFIG", raising=False)
    assert resolve_api_key(None, {"HOME": "/nonexistent-home"}) is None
    monkeypatch.setenv("COMFYFLEET_API_KEY", "secret-1")
    assert AsyncClient("http://h:1")._headers()["Authorization"] == "Bearer secret-1"
    monkeypatch.delenv("COMFYFLEET_API_KEY")
    assert "Authorization" not in AsyncClient("http://h:1")._headers()


def test_workflow_files(tmp_path: Path) -> None:
    api = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(api))
    assert load_workflow(path) == api
    path.write_text(json.dumps({"workflow": api, "resources": {}}))
    assert load_workflow(path) == api
    path.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(UIFormatWorkflow, match="API format"):
        load_workflow(path)
    path.write_text("{not json")
    with pytest.raises(ClientError, match="not JSON"):
        load_workflow(path)
    with pytest.raises(ClientError, match="cannot read"):
        load_workflow(tmp_path / "missing.json")

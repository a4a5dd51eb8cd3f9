"""The `store` setting: a postgresql:// URL or unset; checked before anything starts, its
password masked wherever it is shown."""

from __future__ import annotations

import os
import tomllib
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.store.dsn import check_store_url, is_postgres, mask_url
from comfyfleet.main import main
from comfyfleet.shared.settings import MASK, ConfigError, effective, is_secret

secrets = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=8, max_size=30)


@given(password=secrets, user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True))
def test_mask_hides_the_password_and_keeps_the_rest(password: str, user: str) -> None:
    encoded = quote(password, safe="")
    url = f"postgresql://{user}:{encoded}@db.example:5433/fleet?sslmode=require&password={encoded}"
    shown = mask_url(url)
    assert encoded not in shown
    params = conninfo_to_dict(shown)
    assert params["password"] == MASK
    assert (params["user"], params["host"], params["port"], params["dbname"]) == (
        user,
        "db.example",
        "5433",
        "fleet",
    )
    assert params["sslmode"] == "require"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgres://u:p@h/db", f"postgres://u:{MASK}@h/db"),
        ("postgresql://u:p%40ss@h1:1,h2:2/db", f"postgresql://u:{MASK}@h1:1,h2:2/db"),
        ("postgresql:///db?sslpassword=x&user=u", f"postgresql:///db?sslpassword={MASK}&user=u"),
        ("host=h password='a b' user=u", f"host=h password={MASK} user=u"),
    ],
)
def test_mask_examples(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_store_is_shown_masked_by_config_show(capsys: pytest.CaptureFixture[str]) -> None:
    saved = {k: v for k, v in os.environ.items() if k.startswith("COMFYFLEET_")}
    for name in saved:
        del os.environ[name]
    os.environ["COMFYFLEET_STORE"] = "postgresql://fleet:hunter2-secret@db:5432/fleet"
    try:
        code = main(["config", "show", "--role", "coordinator"])
    finally:
        del os.environ["COMFYFLEET_STORE"]
        os.environ.update(saved)
    out = capsys.readouterr().out
    assert code == 0
    assert "hunter2-secret" not in out
    assert tomllib.loads(out)["store"] == f"postgresql://fleet:{MASK}@db:5432/fleet"
    assert is_secret(CoordinatorConfig, "store")
    assert effective(CoordinatorConfig, {"data_dir": "d"})["store"] is None  # default: SQLite


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u:topsecret@h/db", "expected postgresql://"),
        ("/var/lib/fleet.db", "expected postgresql://"),
        ("postgresql://u:topsecret@h/db?bogus=1", 'invalid URI query parameter: "bogus"'),
        ("postgresql://u:topsecret@h:99999/db", "port must be 1..65535"),
        ("postgresql://u:topsecret@h:nope/db", "port must be 1..65535"),
    ],
)
def test_a_bad_store_url_is_a_clear_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_store_url(url)
    assert info.value.key == "store"
    assert problem in info.value.message
    assert "topsecret" not in info.value.message


def test_coordinator_refuses_a_bad_store_before_starting(
    capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    code = main(["coordinator", "--data-dir", str(tmp_path), "--store", "mysql://u:pw1234@h/x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("comfyfleet coordinator: store: expected postgresql://")
    assert "pw1234" not in err and "Traceback" not in err


def test_which_backend() -> None:
    assert is_postgres("postgresql://h/db") and is_postgres("POSTGRES://h/db")
    assert not is_postgres(None) and not is_postgres("sqlite:///x")
    check_store_url("postgresql://u:p@127.0.0.1:5432/db?sslmode=disable&connect_timeout=3")

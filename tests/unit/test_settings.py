"""Settings layering: TOML file < environment < flags, typed by the config dataclass fields."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent.config import AgentConfig
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.shared.settings import (
    MASK,
    ConfigError,
    Layer,
    build,
    coerce,
    effective,
    env_layer,
    file_layer,
    is_secret,
    resolve,
    to_toml,
)


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    port: int = 1
    ratio: float = 0.5
    on: bool = False
    where: Path | None = None
    urls: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    api_token: str | None = None
    password_file_hint: str = field(default="", metadata={"secret": True})


def test_layers_apply_in_order_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'name = "file"\nport = 10\nratio = 1.5\nurls = ["http://a", "http://b"]\n'
        '[labels]\nzone = "eu"\n'
    )
    env = env_layer(
        Sample,
        {
            "COMFYFLEET_PORT": "20",
            "COMFYFLEET_ON": "yes",
            "COMFYFLEET_UNRELATED": "x",
            "COMFYFLEET_WHERE": "/srv/x",
        },
    )
    flags = Layer("flags", {"port": 30}, text=False)
    values = resolve(Sample, [file_layer(path), env, flags])
    assert values == {
        "name": "file",
        "port": 30,
        "ratio": 1.5,
        "on": True,
        "where": Path("/srv/x"),
        "urls": ("http://a", "http://b"),
        "labels": {"zone": "eu"},
    }
    assert build(Sample, values) == Sample(
        name="file",
        port=30,
        ratio=1.5,
        on=True,
        where=Path("/srv/x"),
        urls=("http://a", "http://b"),
        labels={"zone": "eu"},
    )


def test_text_forms_of_lists_and_tables() -> None:
    values = resolve(
        Sample,
        [
            Layer(
                "environment",
                {"urls": "http://a, http://b", "labels": "zone=eu,gpu=a100"},
                text=True,
            )
        ],
    )
    assert values == {"urls": ("http://a", "http://b"), "labels": {"zone": "eu", "gpu": "a100"}}


def test_unknown_key_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\nprot = 8080\n')
    with pytest.raises(ConfigError) as err:
        resolve(Sample, [file_layer(path)])
    assert err.value.key == "prot"
    assert "unknown key" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    ("key", "raw", "text", "words"),
    [
        ("port", "8080", False, "expected an integer"),  # TOML string where an int belongs
        ("port", True, False, "expected an integer"),
        ("port", "eighty", True, "expected an integer"),
        ("port", -1, False, "must not be negative"),
        ("ratio", "nan", True, "must be finite"),
        ("on", "maybe", True, "expected true or false"),
        ("on", 1, False, "expected true or false"),
        ("urls", 5, False, "expected a list"),
        ("labels", "novalue", True, "KEY=VALUE"),
        ("labels", {"a": 1}, False, "must be a string"),
        ("name", 3, False, "expected a string"),
        ("where", "", False, "expected a path"),
    ],
)
def test_bad_values_are_refused_naming_the_key(key: str, raw: Any, text: bool, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(Sample, [Layer("src", {key: raw}, text=text)])
    assert err.value.key == key
    assert words in err.value.message


def test_bad_toml_and_missing_file_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        file_layer(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        file_layer(tmp_path / "absent.toml")


def test_missing_required_field_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        build(Sample, {"port": 2})
    assert err.value.key == "name"
    assert "COMFYFLEET_NAME" in err.value.message


def test_secrets_are_masked_in_effective_config() -> None:
    assert is_secret(Sample, "api_token") and is_secret(Sample, "password_file_hint")
    assert not is_secret(Sample, "name")
    shown = effective(
        Sample, {"name": "n", "api_token": "s3cr3t-value", "password_file_hint": "hint-value"}
    )
    assert shown["api_token"] == MASK and shown["password_file_hint"] == MASK
    text = to_toml(shown)
    assert "s3cr3t-value" not in text and "hint-value" not in text
    assert AgentConfig.__dataclass_fields__ and is_secret(AgentConfig, "agent_token")


def test_every_field_of_the_real_configs_is_configurable(tmp_path: Path) -> None:
    """Generic by design: printing the defaults and reading them back gives the same values,
    for each field of both daemons (fields added later are covered without code)."""
    for cls, required in (
        (CoordinatorConfig, {"data_dir": tmp_path}),
        (
            AgentConfig,
            {
                "coordinator_url": "http://c",
                "agent_id": "a",
                "comfyui_urls": ("http://u",),
                "data_dir": tmp_path,
            },
        ),
    ):
        shown = effective(cls, required)
        parsed = tomllib.loads(to_toml(shown))
        values = resolve(cls, [Layer("file", parsed, text=False)])
        assert build(cls, values) == cls(**required)
        for f in dataclasses.fields(cls):
            if shown[f.name] is not None:
                assert f.name in values


def test_env_aliases_and_names() -> None:
    layer = env_layer(
        AgentConfig,
        {"COMFYFLEET_COORDINATOR": "http://old", "COMFYFLEET_AGENT_TOKEN": "tok"},
        {"COMFYFLEET_COORDINATOR": "coordinator_url"},
    )
    assert layer.values == {"coordinator_url": "http://old", "agent_token": "tok"}


@given(st.integers(min_value=0, max_value=2**40))
def test_integers_round_trip_from_text_and_toml(n: int) -> None:
    assert coerce(int, str(n), text=True) == n
    assert coerce(int, n, text=False) == n
    assert coerce(float, n, text=False) == float(n)


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters=",", blacklist_categories=("Cs",)),
            min_size=1,
        ).filter(lambda s: s.strip() == s and s),
        max_size=5,
    )
)
def test_string_lists_round_trip_through_comma_text(items: list[str]) -> None:
    assert coerce(tuple[str, ...], ",".join(items), text=True) == tuple(items)


@given(
    st.dictionaries(
        st.sampled_from(["name", "port", "ratio", "on", "urls"]),
        st.one_of(st.integers(), st.text(), st.booleans(), st.floats(), st.lists(st.integers())),
        max_size=5,
    )
)
def test_resolve_either_types_a_value_or_names_the_bad_key(raw: dict[str, Any]) -> None:
    try:
        values = resolve(Sample, [Layer("file", raw, text=False)])
    except ConfigError as exc:
        assert exc.key in raw
    else:
        assert set(values) == set(raw)

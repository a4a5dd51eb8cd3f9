"""Several coordinator URLs (shared/endpoints.py): parsing, moving on, redirects, backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.shared.endpoints import Endpoints, backoff_s, origin, parse_urls
from comfyfleet.shared.errors import InvalidInput


def test_urls_from_commas_and_lists_in_order_without_duplicates() -> None:
    assert parse_urls("http://a:1/, http://b:2,,http://a:1") == ("http://a:1", "http://b:2")
    assert parse_urls(["http://a:1,http://b:2", "https://c"]) == (
        "http://a:1",
        "http://b:2",
        "https://c",
    )


@pytest.mark.parametrize("bad", ["", " , ", "a:1", "ftp://x", "http://", "http://a,b"])
def test_bad_urls_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_urls(bad, "coordinator_url")
    assert err.value.field == "coordinator_url"


def test_failure_moves_on_and_wraps_around() -> None:
    ends = Endpoints("http://a,http://b,http://c")
    assert ends.current == "http://a"
    assert [ends.failed() for _ in range(3)] == ["http://b", "http://c", "http://a"]


def test_redirect_moves_to_the_leader_and_learns_an_unknown_one() -> None:
    ends = Endpoints("http://a:1,http://b:2")
    assert ends.redirected("http://b:2/agent/v1/lease?x=1") == "http://b:2"
    assert ends.redirected("https://c:3/agent/v1/register") == "https://c:3"
    assert ends.urls == ["http://a:1", "http://b:2", "https://c:3"]
    with pytest.raises(InvalidInput):
        ends.redirected("/agent/v1/lease")  # not absolute: not followed
    assert origin("http://h:9/p/q?r") == "http://h:9"


@given(st.integers(0, 100), st.integers(0, 2**32 - 1))
def test_backoff_is_jittered_between_half_and_all_of_a_capped_exponential(
    failures: int, seed: int
) -> None:
    wait = backoff_s(failures, 0.1, 2.0, random.Random(seed))
    ceiling = min(2.0, 0.1 * 2 ** min(failures, 30))
    assert ceiling / 2 <= wait <= ceiling


def test_backoff_spreads_a_fleet() -> None:
    rng = random.Random(1)
    waits = {round(backoff_s(5, rng=rng), 3) for _ in range(50)}
    assert len(waits) > 40

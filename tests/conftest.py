"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.postgres import Cluster, PostgresMissing, start_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the whole session (started on first use, stopped at
    the end). Without PostgreSQL the tests that need it fail, saying why."""
    try:
        cluster = start_cluster()
    except PostgresMissing as exc:
        pytest.fail(f"PostgreSQL is needed here and cannot be had: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()

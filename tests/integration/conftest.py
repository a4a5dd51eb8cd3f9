"""The fleet and API fixtures most integration tests share; a module that needs another
coordinator set-up or agents from the start defines its own `fleet` with `running_fleet`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import Api, Fleet, api_session, running_fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path) as f:
        yield f


@pytest.fixture
async def api(fleet: Fleet) -> AsyncIterator[Api]:
    async with api_session(fleet.url) as a:
        yield a

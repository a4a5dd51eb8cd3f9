"""Property-based API fuzzing with schemathesis against `/openapi.json`, bounded in time.

A real coordinator app serves on 127.0.0.1 (in a thread, with short long-poll waits), and
schemathesis generates valid (positive) and invalid (negative) requests for every operation in
the spec. Whatever arrives: no 5xx, no hang, and every 4xx body is `{"error": {code, message,
field}}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from comfyfleet.coordinator.app import create_app
from tests.api.conftest import fast_config
from tests.helpers.procs import free_port

pytestmark = pytest.mark.timeout(240)
EXAMPLES = 500  # per mode; the whole file stays within ~30 s on 2 cores


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> dict[str, Any]:
    try:
        return {"data": msgspec.msgpack.encode(value)}
    except (OverflowError, TypeError):  # beyond msgpack (ints over 64 bits): send it anyway
        return {"data": json.dumps(value).encode()}


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    config = dataclasses.replace(
        fast_config(tmp),
        lease_wait_s=0.2,
        body_read_timeout_s=5.0,
        max_body_bytes=256 << 10,
        max_chunk_bytes=256 << 10,
    )
    port = free_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        runner = web.AppRunner(create_app(config), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def check_response(case: Any, resp: schemathesis.Response) -> None:
    text = resp.content[:300].decode(errors="replace")
    where = f"{case.method} {case.formatted_path} -> {resp.status_code}: {text}"
    assert resp.status_code < 500, where
    if resp.status_code >= 400:
        ctype = resp.headers.get("content-type", [""])[0]
        assert ctype.startswith("application/json"), where
        body = json.loads(resp.content)
        assert set(body) == {"error"}, where
        err = body["error"]
        assert set(err) == {"code", "message", "field"}, where
        assert isinstance(err["code"], str) and err["code"], where
        assert isinstance(err["message"], str) and err["message"], where
        assert err["field"] is None or isinstance(err["field"], str), where


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_every_operation(live_url: str, mode: GenerationMode) -> None:
    spec = requests.get(f"{live_url}/openapi.json", timeout=5).json()
    for path, ops in list(spec["paths"].items()):  # endless streams: tested on their own
        spec["paths"][path] = {m: op for m, op in ops.items() if not op.get("x-stream")}
    schema = schemathesis.openapi.from_dict(spec)
    session = requests.Session()
    slowest = [0.0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        t0 = time.monotonic()
        resp = case.call(base_url=live_url, session=session, timeout=10)
        slowest[0] = max(slowest[0], time.monotonic() - t0)
        check_response(case, resp)

    run()
    health = session.get(f"{live_url}/healthz", timeout=5)
    assert health.status_code == 200, "the coordinator is still serving after the fuzz run"
    print(f"{mode.value}: {EXAMPLES} examples, slowest answer {slowest[0]:.2f} s")

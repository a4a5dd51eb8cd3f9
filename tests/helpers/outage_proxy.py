"""A loopback HTTP proxy in front of a coordinator that can play an outage: for a while it
answers every agent request (`/agent/v1/...`) with a real `503` and `Retry-After`, as a
coordinator whose store is failing does; everything else passes through.

Control: `POST /__outage?seconds=S&retry_after=R[&only=finish,jobs]` starts an outage of S seconds
(for those kinds of agent request only; a `reports` request is of the kinds of the reports it
carries too, so `only=finish` refuses a batch holding a finish); with `&delay=D` those requests
are not refused but forwarded D seconds late (a slow coordinator);
`GET /__outage` says how many 503s were served, by path. Run it as its own process with
`python -m tests.helpers.outage_proxy --port P --upstream URL`, or mount `create_app` in a test.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import aiohttp
import msgspec
from aiohttp import web
from msgspec import json, msgpack

UPSTREAM = web.AppKey("upstream", str)
STATE = web.AppKey("state", dict)
SESSION = web.AppKey("session", aiohttp.ClientSession)
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


async def control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        state["until"] = time.monotonic() + float(request.query.get("seconds", "60"))
        state["retry_after"] = request.query.get("retry_after", "5")
        only = request.query.get("only", "")
        state["only"] = set(only.split(",")) if only else None
        state["delay"] = float(request.query.get("delay", "0"))
    left = max(0.0, state["until"] - time.monotonic())
    return web.json_response({"left_s": left, "served_503": dict(state["served"])})


def kinds_of(path: str, body: bytes) -> list[str]:
    """register, heartbeat, lease, started, events, finish, jobs (output chunks), reports (and
    the kinds of the reports in it)."""
    if not path.startswith("/agent/v1/"):
        return []
    kind = path.split("/")[3]
    if kind != "reports":
        return [kind]
    try:
        batch = msgpack.decode(body) if body[:1] != b"{" else json.decode(body)
        inner = [k for r in batch["reports"] for k, v in r.items() if v is not None]
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        inner = []
    return [kind, *dict.fromkeys(inner)]


async def forward(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.read()
    kinds = kinds_of(request.path, body)
    only = state["only"]
    hit = [k for k in kinds if only is None or k in only]
    if hit and time.monotonic() < state["until"] and state["delay"] > 0:
        await asyncio.sleep(state["delay"])
    elif hit and time.monotonic() < state["until"]:
        for kind in hit:
            state["served"][kind] += 1
        return web.json_response(
            {"error": {"code": "store_unavailable", "message": "outage (test proxy)"}},
            status=503,
            headers={"Retry-After": state["retry_after"]},
        )
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    async with request.app[SESSION].request(
        request.method,
        request.app[UPSTREAM] + request.path_qs,
        data=body,
        headers=headers,
        allow_redirects=False,
    ) as upstream:
        data = await upstream.read()
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
        return web.Response(body=data, status=upstream.status, headers=out)


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app[UPSTREAM] = upstream.rstrip("/")
    app[STATE] = {"until": 0.0, "retry_after": "5", "only": None, "delay": 0.0}
    app[STATE]["served"] = Counter()

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/__outage", control)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(create_app(args.upstream), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()

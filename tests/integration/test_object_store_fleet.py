"""A whole fleet with its outputs in S3-compatible object storage (moto's server mode, a real
process on loopback): the agent uploads straight to the bucket, the job completes with every
output there and verified, and downloads redirect to the bucket and return the bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet, api_session, running_fleet
from tests.helpers.s3 import BUCKET, S3Server, start_s3
from tests.integration.test_media_outputs import MEDIA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    server = start_s3(tmp_path)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)  # the coordinator process's AWS credentials
    yield server
    server.stop()


@pytest.fixture
def fleet(tmp_path: Path, s3: S3Server) -> Iterator[Fleet]:
    args = [
        "--heartbeat-interval", "0.5",
        "--set", f"output_store=s3://{BUCKET}/fleet",
        "--set", f"s3_endpoint_url={s3.url}",
    ]  # fmt: skip
    with running_fleet(tmp_path, args) as f:
        yield f


async def test_outputs_go_to_the_bucket_verified_and_downloads_redirect(
    fleet: Fleet, s3: S3Server
) -> None:
    fleet.add_sim("s1")
    fleet.add_agent("a1", "s1")
    async with api_session(fleet.url) as api:
        await api.agents_online({"a1"})
        job = await api.submit(MEDIA)
        done = await api.wait(job["id"], {"COMPLETED", "FAILED"})
        assert done["status"] == "COMPLETED", done["error"]
        stored = s3.objects()
        assert len(done["outputs"]) == 4 and len(stored) == 4
        for out in done["outputs"]:
            key = f"fleet/default/{job['id']}/1/{out['name']}"
            assert hashlib.sha256(stored[key]).hexdigest() == out["sha256"]
            async with api.s.get(f"{api.url}{out['url']}", allow_redirects=False) as r:
                assert r.status == 307 and r.headers["Location"].startswith(s3.url)
            async with api.s.get(f"{api.url}{out['url']}") as r:  # followed to the bucket
                assert await r.read() == stored[key]
                assert r.headers["Content-Type"].split(";")[0] == out["content_type"].split(";")[0]
        assert not (fleet.tmp / "coord" / "outputs" / job["id"]).exists()  # no bytes on its disk

"""Every output kind through the whole fleet: a video (VideoHelperSuite's `gifs`), an audio file
(`audio`) and a text result (PreviewAny's `text`) from the simulator reach the coordinator,
verified by sha256, and are served with their right content types."""

from __future__ import annotations

import hashlib
import io
import wave
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.fleet import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def combine(prefix: str, fmt: str, save: bool = True) -> dict[str, object]:
    inputs = {"images": ["1", 0], "frame_rate": 10, "loop_count": 0, "pingpong": False}
    inputs |= {"filename_prefix": prefix, "format": fmt, "save_output": save}
    return {"class_type": "VHS_VideoCombine", "inputs": inputs}


MEDIA = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 32, "height": 24, "batch_size": 5, "color": 0xFF8000},
    },
    "2": combine("clip", "image/webp"),
    "3": combine("anim/gif", "image/gif"),
    "4": {
        "class_type": "EmptyAudio",
        "inputs": {"duration": 0.25, "sample_rate": 8000, "channels": 1},
    },
    "5": {"class_type": "SaveAudio", "inputs": {"audio": ["4", 0], "filename_prefix": "audio/x"}},
    "6": combine("preview", "image/gif", save=False),  # to temp: a preview, not a result
    "7": {"class_type": "PreviewAny", "inputs": {"source": "a caption, ünïcode"}},
}


async def test_video_and_audio_outputs_end_to_end(fleet: Fleet, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet.add_sim("s1")
    fleet.add_agent("a1", "s1")
    await api.agents_online({"a1"})
    job = await api.submit(MEDIA)
    done = await api.wait(job["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done["error"]
    by_node = {o["node_id"]: o for o in done["outputs"]}
    assert set(by_node) == {"2", "3", "5", "7"}, done["outputs"]  # node 6 saved to temp
    expected = {"2": "image/webp", "3": "image/gif", "5": "audio/wav", "7": "text/plain"}
    for node, out in by_node.items():
        async with api.s.get(f"{api.url}{out['url']}") as r:
            assert r.status == 200
            body = await r.read()
            assert r.headers["Content-Type"].split(";")[0] == expected[node]
        assert hashlib.sha256(body).hexdigest() == out["sha256"] and len(body) == out["size"]
        if node in ("2", "3"):
            video = Image.open(io.BytesIO(body))
            assert video.size == (32, 24) and video.n_frames == 5
        elif node == "7":
            assert body.decode() == "a caption, ünïcode"
        else:
            with wave.open(io.BytesIO(body)) as audio:
                assert audio.getframerate() == 8000 and audio.getnframes() == 2000

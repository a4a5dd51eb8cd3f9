"""Outputs are served by a content type derived from their stored name, from an allow-list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.shared.media import BINARY, TYPES, served_as


@pytest.mark.parametrize(
    ("name", "content_type", "inline"),
    [
        ("out_00001_.png", "image/png", True),
        ("SHOT.JPG", "image/jpeg", True),
        ("clip.webm", "video/webm", True),
        ("voice.flac", "audio/flac", False),
        ("clip.mp4", "video/mp4", True),
        ("anim.gif", "image/gif", True),
        ("voice.wav", "audio/wav", False),
        ("mesh_00001_.glb", "model/gltf-binary", False),  # 3D: a download
        ("scene.gltf", "model/gltf+json", False),
        ("meta.json", "application/json", False),
        ("notes.txt", "text/plain; charset=utf-8", False),
        ("page.html", BINARY, False),
        ("icon.svg", BINARY, False),  # an image format that runs script: never inline
        ("data.xml", BINARY, False),
        ("report.pdf", BINARY, False),
        ("x.png.html", BINARY, False),
        ("noext", BINARY, False),
        ("png", BINARY, False),
        (".png", BINARY, False),
    ],
)
def test_allow_list(name: str, content_type: str, inline: bool) -> None:
    served = served_as(name)
    assert (served.content_type, served.inline) == (content_type, inline)
    assert served.disposition == ("inline" if inline else "attachment")


@given(st.text(max_size=40))
def test_any_name_is_served_as_listed_or_binary_and_only_media_inline(name: str) -> None:
    served = served_as(name)
    assert served.content_type in {*TYPES.values(), BINARY}
    assert served.inline == served.content_type.startswith(("image/", "video/"))
    assert "html" not in served.content_type and "svg" not in served.content_type
    assert "xml" not in served.content_type and "javascript" not in served.content_type

"""What an output file is served as: a content type derived from its stored name, never the one
an agent (or ComfyUI, or a custom node) declared.

An allow-list by extension: raster images, video and audio as themselves, JSON as JSON, text as
`text/plain`, everything else (HTML, SVG, XML, PDF, scripts, unknown) as
`application/octet-stream`. Only images and video are shown inline; anything else is a download
(`Content-Disposition: attachment`). With `X-Content-Type-Options: nosniff` a browser cannot turn
an output into active content on the coordinator's origin.
"""

from __future__ import annotations

from dataclasses import dataclass

BINARY = "application/octet-stream"
TYPES: dict[str, str] = {
    # images (raster only: SVG is a document that runs script)
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "avif": "image/avif",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    # video
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    # audio
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/opus",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    # 3D (ComfyUI's SaveGLB and friends report them under `3d`): downloads
    "glb": "model/gltf-binary",
    "gltf": "model/gltf+json",
    # data and text
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "csv": "text/plain; charset=utf-8",
    "md": "text/plain; charset=utf-8",
    "log": "text/plain; charset=utf-8",
}
INLINE = ("image/", "video/")


@dataclass(frozen=True, slots=True)
class Served:
    content_type: str
    inline: bool  # shown in the browser; else a download

    @property
    def disposition(self) -> str:
        return "inline" if self.inline else "attachment"


def served_as(name: str) -> Served:
    """How an output stored under `name` is served (by its extension, case-insensitive)."""
    stem, dot, ext = name.rpartition(".")
    content_type = TYPES.get(ext.lower(), BINARY) if dot and stem else BINARY
    return Served(content_type, content_type.startswith(INLINE))

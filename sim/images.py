"""Cheap stand-ins for tensors (size + colour) and the real image bytes made from them."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

__all__ = [
    "Rgb",
    "SimClip",
    "SimConditioning",
    "SimImage",
    "SimLatent",
    "SimMask",
    "SimModel",
    "SimVae",
    "color_from_int",
    "color_from_text",
    "encode_image",
    "mean_color",
    "preview_bytes",
    "write_png",
]

Rgb = tuple[int, int, int]
PREVIEW_MAX_SIDE = 512


def color_from_int(value: int) -> Rgb:
    value &= 0xFFFFFF
    return ((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF)


def color_from_text(*parts: object) -> Rgb:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return (digest[0], digest[1], digest[2])


def _fmt_color(color: Rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


@dataclass(frozen=True)
class SimImage:
    """An IMAGE batch: `batch` images of `width` x `height`, each filled with `color`."""

    width: int
    height: int
    batch: int
    color: Rgb

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.batch

    def __str__(self) -> str:  # what ComfyUI's current_inputs shows for a tensor
        return (
            f"tensor(shape=[{self.batch}, {self.height}, {self.width}, 3], "
            f"fill={_fmt_color(self.color)})"
        )


@dataclass(frozen=True)
class SimMask:
    width: int
    height: int
    batch: int

    def __str__(self) -> str:
        return f"tensor(shape=[{self.batch}, {self.height}, {self.width}])"


@dataclass(frozen=True)
class SimLatent:
    """A LATENT: sizes in latent pixels (1/8 of the image)."""

    width: int
    height: int
    batch: int
    color: Rgb

    @property
    def image_pixels(self) -> int:
        return self.width * 8 * self.height * 8 * self.batch

    def __str__(self) -> str:
        return f"{{'samples': tensor(shape=[{self.batch}, 4, {self.height}, {self.width}])}}"


@dataclass(frozen=True)
class SimModel:
    name: str
    vram_mb: int

    def __str__(self) -> str:
        return f"<comfy.model_patcher.ModelPatcher object ({self.name})>"


@dataclass(frozen=True)
class SimClip:
    name: str

    def __str__(self) -> str:
        return f"<comfy.sd.CLIP object ({self.name})>"


@dataclass(frozen=True)
class SimVae:
    name: str

    def __str__(self) -> str:
        return f"<comfy.sd.VAE object ({self.name})>"


@dataclass(frozen=True)
class SimConditioning:
    text: str
    clip: str

    def __str__(self) -> str:
        return "[[tensor(shape=[1, 77, 768]), {'pooled_output': tensor(shape=[1, 768])}]]"


def write_png(
    path: Path,
    width: int,
    height: int,
    color: Rgb,
    *,
    compress_level: int = 4,
    text: Mapping[str, Any] | None = None,
) -> int:
    """Write a real PNG of exactly `width` x `height`; returns its size in bytes."""
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    image = Image.new("RGB", (width, height), color)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info, compress_level=compress_level)
    return path.stat().st_size


def encode_image(width: int, height: int, color: Rgb, fmt: str) -> bytes:
    """The bytes of a small image, `fmt` "JPEG" or "PNG"."""
    buffer = io.BytesIO()
    image = Image.new("RGB", (max(1, width), max(1, height)), color)
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def preview_bytes(latent: SimLatent, step: int, steps: int) -> bytes:
    """A sampler preview: latent-sized JPEG fading from grey noise to the final colour."""
    scale = min(1.0, PREVIEW_MAX_SIDE / max(latent.width, latent.height, 1))
    width = max(1, int(latent.width * scale))
    height = max(1, int(latent.height * scale))
    frac = step / max(steps, 1)
    color = tuple(int(128 + (c - 128) * frac) for c in latent.color)
    return encode_image(width, height, (color[0], color[1], color[2]), "JPEG")


def mean_color(path: Path) -> tuple[int, int, Rgb]:
    """Size and average colour of an image file (for LoadImage)."""
    with Image.open(path) as img:
        width, height = img.size
        small = img.convert("RGB").resize((1, 1))
        pixel = small.getpixel((0, 0))
    assert isinstance(pixel, tuple)
    return width, height, (int(pixel[0]), int(pixel[1]), int(pixel[2]))

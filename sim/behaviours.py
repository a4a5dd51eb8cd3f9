"""What each simulated node does: timings, VRAM, outputs, files, progress and previews."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.images import (
    SimClip,
    SimConditioning,
    SimImage,
    SimLatent,
    SimMask,
    SimModel,
    SimVae,
    color_from_int,
    color_from_text,
    encode_image,
    mean_color,
    preview_bytes,
    write_png,
)
from comfyfleet.sim.media_files import VIDEO_FORMATS, SimAudio, write_animation, write_wav
from comfyfleet.sim.naming import save_image_path

__all__ = ["BEHAVIOURS", "NodeContext", "NodeFailure", "NodeResult", "pixel_factor"]

BASE_PIXELS = 512 * 512
SAMPLER_MB_PER_BASE = 768  # working VRAM of a sampler per 512x512 image
DECODE_MB_PER_BASE = 256
BLUR_COST = 20.0


class NodeFailure(Exception):
    """A node raised: becomes execution_error with this type and message."""

    def __init__(self, exception_type: str, message: str, tips: str = "") -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message
        self.tips = tips


@dataclass(frozen=True)
class NodeResult:
    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


class NodeContext(Protocol):
    """What the executor gives a running node."""

    node_id: str
    prompt: Mapping[str, Any]
    extra_data: Mapping[str, Any]
    config: SimConfig

    async def work(self, ms: float) -> None: ...

    async def step(self, value: int, maximum: int, preview: tuple[str, bytes] | None) -> None: ...

    def text(self, text: str) -> None: ...

    def temp_suffix(self) -> str: ...

    def model(self, name: str) -> SimModel: ...

    async def ensure_loaded(self, model: SimModel) -> None: ...

    def allocate(self, size_mb: int, keep: tuple[str, ...] = ()) -> None: ...

    def input_path(self, name: str) -> Path: ...

    def saved(self, count: int) -> None: ...


def pixel_factor(pixels: int) -> float:
    return pixels / BASE_PIXELS


Behaviour = Callable[[NodeContext, dict[str, Any]], Awaitable[NodeResult]]


async def _empty_image(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    image = SimImage(a["width"], a["height"], a["batch_size"], color_from_int(a["color"]))
    await ctx.work(ctx.config.node_ms * pixel_factor(image.pixels))
    return NodeResult((image,))


async def _image_invert(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    image: SimImage = a["image"]
    await ctx.work(ctx.config.node_ms * pixel_factor(image.pixels))
    r, g, b = image.color
    inverted = SimImage(image.width, image.height, image.batch, (255 - r, 255 - g, 255 - b))
    return NodeResult((inverted,))


async def _image_scale(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    image: SimImage = a["image"]
    width, height = a["width"], a["height"]
    if width == 0 and height == 0:
        width, height = image.width, image.height
    elif width == 0:
        width = max(1, round(image.width * height / image.height))
    elif height == 0:
        height = max(1, round(image.height * width / image.width))
    scaled = SimImage(width, height, image.batch, image.color)
    await ctx.work(ctx.config.node_ms * pixel_factor(scaled.pixels))
    return NodeResult((scaled,))


async def _image_blur(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    image: SimImage = a["image"]
    await ctx.work(ctx.config.node_ms * BLUR_COST * pixel_factor(image.pixels))
    return NodeResult((image,))


async def _load_image(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    path = ctx.input_path(a["image"])
    width, height, color = await asyncio.to_thread(mean_color, path)
    await ctx.work(ctx.config.node_ms)
    return NodeResult((SimImage(width, height, 1, color), SimMask(width, height, 1)))


async def _save(
    ctx: NodeContext, images: SimImage, prefix: str, folder: Path, kind: str, level: int
) -> NodeResult:
    target = save_image_path(prefix, str(folder), images.width, images.height)
    text: dict[str, Any] = {"prompt": json.dumps(ctx.prompt)}
    extra = ctx.extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        text.update({k: json.dumps(v) for k, v in extra.items()})
    results = []
    counter = target.counter
    for batch_number in range(images.batch):
        name = target.filename.replace("%batch_num%", str(batch_number))
        file = f"{name}_{counter:05}_.png"
        await asyncio.to_thread(
            write_png,
            Path(target.folder) / file,
            images.width,
            images.height,
            images.color,
            compress_level=level,
            text=text,
        )
        results.append({"filename": file, "subfolder": target.subfolder, "type": kind})
        counter += 1
    ctx.saved(len(results))
    await ctx.work(ctx.config.node_ms)
    return NodeResult((), {"images": results})


async def _save_image(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    return await _save(ctx, a["images"], a["filename_prefix"], ctx.config.output_dir, "output", 4)


async def _preview_image(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    prefix = "ComfyUI" + ctx.temp_suffix()
    return await _save(ctx, a["images"], prefix, ctx.config.resolved_temp_dir, "temp", 1)


async def _save_image_websocket(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    images: SimImage = a["images"]
    for index in range(images.batch):
        png = await asyncio.to_thread(
            encode_image, images.width, images.height, images.color, "PNG"
        )
        await ctx.step(index, images.batch, ("PNG", png))
    return NodeResult(())


async def _get_image_size(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    image: SimImage = a["image"]
    ctx.text(f"width: {image.width}, height: {image.height}\n batch size: {image.batch}")
    return NodeResult((image.width, image.height, image.batch))


async def _preview_any(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    source = a.get("source")
    if isinstance(source, str):
        value = source
    elif isinstance(source, int | float | bool):
        value = str(source)
    elif source is None:
        value = "None"
    else:
        try:
            value = json.dumps(source, indent=4)
        except (TypeError, ValueError):
            value = str(source)
    return NodeResult((), {"text": [value]})


async def _video_combine(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    """VideoHelperSuite's Video Combine: the batch as the frames of one animation, told of
    under `gifs` (output, or temp when save_output is off)."""
    images: SimImage = a["images"]
    fmt = a.get("format", "image/gif")
    ext = VIDEO_FORMATS[fmt]
    save = bool(a.get("save_output", True))
    folder = ctx.config.output_dir if save else ctx.config.resolved_temp_dir
    target = save_image_path(a.get("filename_prefix", "AnimateDiff"), str(folder))
    file = f"{target.filename}_{target.counter:05}.{ext}"
    frame_rate = float(a.get("frame_rate", 8.0))
    await asyncio.to_thread(
        write_animation,
        Path(target.folder) / file,
        images.width,
        images.height,
        images.batch,
        images.color,
        ext,
        frame_rate,
    )
    ctx.saved(1)
    await ctx.work(ctx.config.node_ms * max(1, images.batch))
    entry = {
        "filename": file,
        "subfolder": target.subfolder,
        "type": "output" if save else "temp",
        "format": fmt,
        "frame_rate": frame_rate,
        "workflow": f"{target.filename}_{target.counter:05}.png",
        "fullpath": str(Path(target.folder) / file),
    }
    return NodeResult(((save, [entry["fullpath"]]),), {"gifs": [entry]})


async def _empty_audio(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    await ctx.work(ctx.config.node_ms)
    return NodeResult((SimAudio(a["duration"], a["sample_rate"], a["channels"]),))


async def _save_audio(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    """SaveAudio: one file per clip, told of under `audio` (WAV here, FLAC in ComfyUI)."""
    audio: SimAudio = a["audio"]
    target = save_image_path(a["filename_prefix"], str(ctx.config.output_dir))
    file = f"{target.filename}_{target.counter:05}_.wav"
    await asyncio.to_thread(write_wav, Path(target.folder) / file, audio)
    ctx.saved(1)
    await ctx.work(ctx.config.node_ms)
    return NodeResult(
        (), {"audio": [{"filename": file, "subfolder": target.subfolder, "type": "output"}]}
    )


async def _checkpoint_loader(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    model = ctx.model(a["ckpt_name"])
    await ctx.ensure_loaded(model)
    return NodeResult((model, SimClip(model.name), SimVae(model.name)))


async def _clip_text_encode(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    clip: SimClip = a["clip"]
    await ctx.work(ctx.config.node_ms)
    return NodeResult((SimConditioning(a["text"], clip.name),))


async def _empty_latent(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    latent = SimLatent(a["width"] // 8, a["height"] // 8, a["batch_size"], (128, 128, 128))
    await ctx.work(ctx.config.node_ms)
    return NodeResult((latent,))


async def _ksampler(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    model: SimModel = a["model"]
    latent: SimLatent = a["latent_image"]
    positive: SimConditioning = a["positive"]
    await ctx.ensure_loaded(model)
    factor = pixel_factor(latent.image_pixels)
    ctx.allocate(math.ceil(SAMPLER_MB_PER_BASE * factor), keep=(model.name,))
    steps = a["steps"] if a["denoise"] > 0 else 0
    color = color_from_text(
        a["seed"], a["steps"], a["cfg"], a["sampler_name"], a["scheduler"], a["denoise"],
        positive.text, model.name, latent.color,
    )  # fmt: skip
    result = SimLatent(latent.width, latent.height, latent.batch, color)
    every = ctx.config.preview_every
    for step in range(1, steps + 1):
        await ctx.work(ctx.config.step_ms * factor)
        preview = None
        if every > 0 and (step % every == 0 or step == steps):
            jpeg = await asyncio.to_thread(preview_bytes, result, step, steps)
            preview = ("JPEG", jpeg)
        await ctx.step(step, steps, preview)
    return NodeResult((result,))


async def _vae_decode(ctx: NodeContext, a: dict[str, Any]) -> NodeResult:
    latent: SimLatent = a["samples"]
    factor = pixel_factor(latent.image_pixels)
    ctx.allocate(math.ceil(DECODE_MB_PER_BASE * factor))
    await ctx.work(ctx.config.node_ms * 4 * factor)
    image = SimImage(latent.width * 8, latent.height * 8, latent.batch, latent.color)
    return NodeResult((image,))


BEHAVIOURS: Mapping[str, Behaviour] = {
    "EmptyImage": _empty_image,
    "ImageInvert": _image_invert,
    "ImageScale": _image_scale,
    "ImageBlur": _image_blur,
    "LoadImage": _load_image,
    "SaveImage": _save_image,
    "PreviewImage": _preview_image,
    "SaveImageWebsocket": _save_image_websocket,
    "GetImageSize": _get_image_size,
    "PreviewAny": _preview_any,
    "VHS_VideoCombine": _video_combine,
    "EmptyAudio": _empty_audio,
    "SaveAudio": _save_audio,
    "CheckpointLoaderSimple": _checkpoint_loader,
    "CLIPTextEncode": _clip_text_encode,
    "EmptyLatentImage": _empty_latent,
    "KSampler": _ksampler,
    "VAEDecode": _vae_decode,
}

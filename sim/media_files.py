"""Real video and audio files for the simulated media nodes: an animated GIF or WebP (Pillow)
the way VideoHelperSuite's Video Combine writes them, and WAV audio (the standard library).

Where ComfyUI's SaveAudio writes FLAC, the simulator writes WAV (PCM): the file a client gets is
still real audio, and what the agent and coordinator do with it (the `audio` key of `executed`,
content type by extension) is the same.
"""

from __future__ import annotations

import math
import struct
import wave
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from comfyfleet.sim.images import Rgb

# VideoHelperSuite's `format` combo values the simulator writes, and their file extension
VIDEO_FORMATS = {"image/gif": "gif", "image/webp": "webp"}


@dataclass(frozen=True)
class SimAudio:
    """An AUDIO value: `seconds` of a sine tone at `sample_rate` with `channels`."""

    seconds: float
    sample_rate: int
    channels: int

    def __str__(self) -> str:
        return f"audio({self.seconds:g} s, {self.sample_rate} Hz, {self.channels} ch)"


def write_animation(
    path: Path, width: int, height: int, frames: int, color: Rgb, fmt: str, frame_rate: float
) -> int:
    """An animated GIF or WebP: `frames` frames fading from `color` to black; its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [
        Image.new(
            "RGB",
            (max(1, width), max(1, height)),
            tuple(int(c * (1 - i / max(1, frames))) for c in color),
        )
        for i in range(max(1, frames))
    ]
    duration_ms = max(1, round(1000 / max(frame_rate, 0.001)))
    images[0].save(
        path,
        format="GIF" if fmt == "gif" else "WEBP",
        save_all=True,
        append_images=images[1:],
        duration=duration_ms,
        loop=0,
    )
    return path.stat().st_size


def write_wav(path: Path, audio: SimAudio, frequency_hz: float = 440.0) -> int:
    """16-bit PCM WAV of a quiet sine tone; its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = max(1, round(audio.seconds * audio.sample_rate))
    samples = bytearray()
    for n in range(frames):
        value = int(3000 * math.sin(2 * math.pi * frequency_hz * n / audio.sample_rate))
        samples += struct.pack("<h", value) * audio.channels
    with wave.open(str(path), "wb") as out:
        out.setnchannels(audio.channels)
        out.setsampwidth(2)
        out.setframerate(audio.sample_rate)
        out.writeframes(bytes(samples))
    return path.stat().st_size

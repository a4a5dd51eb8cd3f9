"""Sample API-format workflows: the standard 7-node text-to-image graph the demo, the benchmarks
and the tests submit (the simulator runs it; a real ComfyUI with the checkpoint does too)."""

from __future__ import annotations

from typing import Any

SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"


def txt2img(
    width: int,
    height: int,
    *,
    steps: int,
    seed: int = -1,
    ckpt: str = SD15,
    prefix: str,
    text: str,
    negative: str = "",
) -> dict[str, Any]:
    """Checkpoint -> prompts -> KSampler -> VAEDecode -> SaveImage(`prefix`); seed -1 is random."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": 1},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }

"""The model inventory holds model files only: the folders GET /models lists include configs/
and custom_nodes/ (every file there, e.g. websocket_image_save.py), and a folder may hold
files ComfyUI's loaders never take. Only ComfyUI's own model extensions count."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.agent.inventory import MODEL_EXTENSIONS, model_files, read_inventory

pytestmark = pytest.mark.timeout(30)

# GET /models and GET /models/{folder} as a ComfyUI with some custom nodes may answer them.
FOLDERS: dict[str, list[str]] = {
    "checkpoints": ["sd_xl_base_1.0.safetensors", "sdxl/juggernaut.SAFETENSORS", "put_here.txt"],
    "configs": ["v1-inference.yaml", "anything_v3.yaml"],
    "loras": ["detail.safetensors", "old.pt", "notes.md", "win\\sub.ckpt"],
    "vae": ["ae.sft", "vae.pth", "vae.bin", "x.pt2", "y.pkl"],
    "custom_nodes": ["websocket_image_save.py", "example_node.py.example", "weights.bin"],
    "diffusers": ["stable-diffusion-v1-5"],
}


class FakeComfyUI:
    async def object_info(self) -> dict[str, Any]:
        return {"SaveImage": {}, "KSampler": {}}

    async def model_folders(self) -> list[str]:
        return list(FOLDERS)

    async def models(self, folder: str) -> list[str]:
        return FOLDERS[folder]


async def test_inventory_lists_model_files_only() -> None:
    inv = await read_inventory(FakeComfyUI())  # type: ignore[arg-type]
    assert inv.models == {
        "sd_xl_base_1.0.safetensors",
        "sdxl/juggernaut.SAFETENSORS",
        "detail.safetensors",
        "old.pt",
        "win\\sub.ckpt",
        "ae.sft",
        "vae.pth",
        "vae.bin",
        "x.pt2",
        "y.pkl",
    }
    assert "websocket_image_save.py" not in inv.models
    assert inv.node_classes == {"SaveImage", "KSampler"}


def test_extensions_are_comfyuis_supported_pt_extensions() -> None:
    assert MODEL_EXTENSIONS == {
        ".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"
    }  # fmt: skip


def test_no_model_from_configs_or_custom_nodes_whatever_its_extension() -> None:
    assert model_files("custom_nodes", ["weights.bin", "a.safetensors"]) == set()
    assert model_files("configs", ["a.ckpt"]) == set()
    assert model_files("loras", ["a.safetensors", "a.safetensors.txt", "safetensors"]) == {
        "a.safetensors"
    }

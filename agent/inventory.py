"""What a local ComfyUI can run: its model files and node classes (reported to the coordinator).

Read from `GET /object_info` (every node class) and `GET /models`, `GET /models/{folder}` (model
files by folder). With several instances the agent reports what all of them have (a job may land
on any of its instances).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from comfyfleet.agent.comfyui.client import ComfyUIClient


@dataclass(frozen=True, slots=True)
class Inventory:
    models: frozenset[str]
    node_classes: frozenset[str]


# ComfyUI's `folder_paths.supported_pt_extensions`: the files its model loaders accept.
MODEL_EXTENSIONS = frozenset(
    {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
)
# Folders that GET /models lists but that hold no models: YAML configs and custom node code
# (GET /models/custom_nodes lists every file there, e.g. websocket_image_save.py).
NOT_MODEL_FOLDERS = frozenset({"configs", "custom_nodes"})


def model_files(folder: str, files: Iterable[str]) -> set[str]:
    """The model files among what GET /models/{folder} listed (pure)."""
    if folder in NOT_MODEL_FOLDERS:
        return set()
    return {
        f for f in files if PurePosixPath(f.replace("\\", "/")).suffix.lower() in MODEL_EXTENSIONS
    }


async def read_inventory(client: ComfyUIClient) -> Inventory:
    """Raises ComfyUIError when the instance does not answer."""
    classes = frozenset(await client.object_info())
    models: set[str] = set()
    for folder in await client.model_folders():
        if folder not in NOT_MODEL_FOLDERS:
            models.update(model_files(folder, await client.models(folder)))
    return Inventory(frozenset(models), classes)


def common(inventories: Iterable[Inventory]) -> Inventory | None:
    """What every instance has (None when no instance was read)."""
    items = list(inventories)
    if not items:
        return None
    models = frozenset.intersection(*(i.models for i in items))
    classes = frozenset.intersection(*(i.node_classes for i in items))
    return Inventory(models, classes)

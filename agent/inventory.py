"""What a local ComfyUI can run: its model files and node classes (reported to the coordinator).

Read from `GET /object_info` (every node class) and `GET /models`, `GET /models/{folder}` (model
files by folder). With several instances the agent reports what all of them have (a job may land
on any of its instances).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from comfyfleet.agent.comfyui.client import ComfyUIClient
from comfyfleet.shared.protocol import ComfyCatalog


@dataclass(frozen=True, slots=True)
class Inventory:
    models: frozenset[str]
    node_classes: frozenset[str]
    # ComfyUI's own words for the coordinator's ComfyUI facade: /object_info, models by folder
    object_info: Mapping[str, Any] = field(default_factory=dict, compare=False)
    folders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def catalog(self) -> ComfyCatalog:
        return ComfyCatalog(
            object_info=dict(self.object_info),
            models={folder: list(names) for folder, names in self.folders.items()},
        )


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
    info = await client.object_info()
    models: set[str] = set()
    folders: dict[str, tuple[str, ...]] = {}
    for folder in await client.model_folders():
        names = await client.models(folder)
        folders[folder] = tuple(names)  # as ComfyUI listed them (the ComfyUI facade)
        models.update(model_files(folder, names))  # what placement may count on
    return Inventory(frozenset(models), frozenset(info), info, folders)


def common(inventories: Iterable[Inventory]) -> Inventory | None:
    """What every instance has (None when no instance was read)."""
    items = list(inventories)
    if not items:
        return None
    models = frozenset.intersection(*(i.models for i in items))
    classes = frozenset.intersection(*(i.node_classes for i in items))
    info = {name: entry for name, entry in items[0].object_info.items() if name in classes}
    folders = {
        folder: tuple(n for n in names if all(n in i.folders.get(folder, ()) for i in items))
        for folder, names in items[0].folders.items()
    }
    return Inventory(models, classes, info, folders)

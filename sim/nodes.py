"""The simulated node catalogue: input/output declarations as ComfyUI's INPUT_TYPES gives them.

What the nodes *do* lives in behaviours.py; this module is data plus the `/object_info` view.
Input specs are ComfyUI-style tuples: `("INT", {"default": 512, "min": 1})`, `("IMAGE",)`, or a
combo `(["a", "b"],)`. Two combos are filled in per request: the checkpoint list and the files of
the input folder (placeholders `CHECKPOINTS` and `INPUT_FILES`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CATALOGUE",
    "CHECKPOINTS",
    "INPUT_FILES",
    "MAX_RESOLUTION",
    "SAMPLERS",
    "SCHEDULERS",
    "CatalogueContext",
    "NodeSpec",
    "object_info",
]

MAX_RESOLUTION = 16384
CHECKPOINTS = "<checkpoints>"
INPUT_FILES = "<input files>"

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]
SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
    "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "er_sde", "seeds_2", "seeds_3",
    "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]  # fmt: skip

InputSpec = tuple[Any, ...]


@dataclass(frozen=True)
class CatalogueContext:
    """What dynamic combos are filled from."""

    checkpoints: tuple[str, ...] = ()
    list_input_files: Callable[[], list[str]] = list


@dataclass(frozen=True)
class NodeSpec:
    name: str
    display_name: str
    category: str
    required: Mapping[str, InputSpec]
    return_types: tuple[str, ...] = ()
    return_names: tuple[str, ...] | None = None
    optional: Mapping[str, InputSpec] = field(default_factory=dict)
    hidden: Mapping[str, str] = field(default_factory=dict)
    output_node: bool = False
    description: str = ""
    python_module: str = "nodes"
    output_tooltips: tuple[str, ...] | None = None
    custom_validated: tuple[str, ...] = ()  # inputs checked by VALIDATE_INPUTS, not min/max/list
    uses_unique_id: bool = False  # hidden UNIQUE_ID: the node id is part of its cache key
    uses_vram: bool = False

    def input_types(self, ctx: CatalogueContext) -> dict[str, dict[str, Any]]:
        """INPUT_TYPES(): {"required": {...}, "optional": {...}, "hidden": {...}}."""
        out: dict[str, dict[str, Any]] = {"required": _fill(self.required, ctx)}
        if self.optional:
            out["optional"] = _fill(self.optional, ctx)
        if self.hidden:
            out["hidden"] = dict(self.hidden)
        return out

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.return_names if self.return_names is not None else self.return_types


def _fill(inputs: Mapping[str, InputSpec], ctx: CatalogueContext) -> dict[str, InputSpec]:
    filled: dict[str, InputSpec] = {}
    for name, spec in inputs.items():
        if spec and spec[0] == CHECKPOINTS:
            spec = (list(ctx.checkpoints), *spec[1:])
        elif spec and spec[0] == INPUT_FILES:
            spec = (sorted(ctx.list_input_files()), *spec[1:])
        filled[name] = spec
    return filled


def _res(default: int, minimum: int, step: int) -> InputSpec:
    return ("INT", {"default": default, "min": minimum, "max": MAX_RESOLUTION, "step": step})


_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."

_SPECS: tuple[NodeSpec, ...] = (
    NodeSpec(
        name="CheckpointLoaderSimple",
        display_name="Load Checkpoint",
        category="loaders",
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise "
        "latents.",
        required={
            "ckpt_name": (CHECKPOINTS, {"tooltip": "The name of the checkpoint (model) to load."})
        },
        return_types=("MODEL", "CLIP", "VAE"),
        output_tooltips=(
            "The model used for denoising latents.",
            "The CLIP model used for encoding text prompts.",
            "The VAE model used for encoding and decoding images to and from latent space.",
        ),
        uses_vram=True,
    ),
    NodeSpec(
        name="CLIPTextEncode",
        display_name="CLIP Text Encode (Prompt)",
        category="conditioning",
        description="Encodes a text prompt using a CLIP model into an embedding that can be used "
        "to guide the diffusion model towards generating specific images.",
        required={
            "text": (
                "STRING",
                {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."},
            ),
            "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
        },
        return_types=("CONDITIONING",),
        output_tooltips=(
            "A conditioning containing the embedded text used to guide the diffusion model.",
        ),
    ),
    NodeSpec(
        name="EmptyLatentImage",
        display_name="Empty Latent Image",
        category="latent",
        description="Create a new batch of empty latent images to be denoised via sampling.",
        required={
            "width": (
                "INT",
                {
                    "default": 512,
                    "min": 16,
                    "max": MAX_RESOLUTION,
                    "step": 8,
                    "tooltip": "The width of the latent images in pixels.",
                },
            ),
            "height": (
                "INT",
                {
                    "default": 512,
                    "min": 16,
                    "max": MAX_RESOLUTION,
                    "step": 8,
                    "tooltip": "The height of the latent images in pixels.",
                },
            ),
            "batch_size": (
                "INT",
                {
                    "default": 1,
                    "min": 1,
                    "max": 4096,
                    "tooltip": "The number of latent images in the batch.",
                },
            ),
        },
        return_types=("LATENT",),
        output_tooltips=("The empty latent image batch.",),
    ),
    NodeSpec(
        name="KSampler",
        display_name="KSampler",
        category="sampling",
        description="Uses the provided model, positive and negative conditioning to denoise the "
        "latent image.",
        required={
            "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
            "seed": (
                "INT",
                {
                    "default": 0,
                    "min": 0,
                    "max": 0xFFFFFFFFFFFFFFFF,
                    "control_after_generate": True,
                    "tooltip": "The random seed used for creating the noise.",
                },
            ),
            "steps": (
                "INT",
                {
                    "default": 20,
                    "min": 1,
                    "max": 10000,
                    "tooltip": "The number of steps used in the denoising process.",
                },
            ),
            "cfg": (
                "FLOAT",
                {
                    "default": 8.0,
                    "min": 0.0,
                    "max": 100.0,
                    "step": 0.1,
                    "round": 0.01,
                    "tooltip": "The Classifier-Free Guidance scale.",
                },
            ),
            "sampler_name": (SAMPLERS, {"tooltip": "The algorithm used when sampling."}),
            "scheduler": (
                SCHEDULERS,
                {
                    "tooltip": "The scheduler controls how noise is "
                    "gradually removed to form the image."
                },
            ),
            "positive": (
                "CONDITIONING",
                {"tooltip": "The conditioning describing the attributes you want to include."},
            ),
            "negative": (
                "CONDITIONING",
                {"tooltip": "The conditioning describing the attributes you want to exclude."},
            ),
            "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
            "denoise": (
                "FLOAT",
                {
                    "default": 1.0,
                    "min": 0.0,
                    "max": 1.0,
                    "step": 0.01,
                    "tooltip": "The amount of denoising applied.",
                },
            ),
        },
        return_types=("LATENT",),
        output_tooltips=("The denoised latent.",),
        uses_vram=True,
    ),
    NodeSpec(
        name="VAEDecode",
        display_name="VAE Decode",
        category="latent",
        description="Decodes latent images back into pixel space images.",
        required={
            "samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
            "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."}),
        },
        return_types=("IMAGE",),
        output_tooltips=("The decoded image.",),
        uses_vram=True,
    ),
    NodeSpec(
        name="SaveImage",
        display_name="Save Image",
        category="image",
        description=_SAVE_DESCRIPTION,
        required={
            "images": ("IMAGE", {"tooltip": "The images to save."}),
            "filename_prefix": (
                "STRING",
                {
                    "default": "ComfyUI",
                    "tooltip": "The prefix for the file to save. This may include formatting "
                    "information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to "
                    "include values from nodes.",
                },
            ),
        },
        hidden=_SAVE_HIDDEN,
        output_node=True,
    ),
    NodeSpec(
        name="PreviewImage",
        display_name="Preview Image",
        category="image",
        description=_SAVE_DESCRIPTION,
        required={"images": ("IMAGE",)},
        hidden=_SAVE_HIDDEN,
        output_node=True,
    ),
    NodeSpec(
        name="LoadImage",
        display_name="Load Image",
        category="image",
        required={"image": (INPUT_FILES, {"image_upload": True})},
        return_types=("IMAGE", "MASK"),
        custom_validated=("image",),
    ),
    NodeSpec(
        name="EmptyImage",
        display_name="EmptyImage",
        category="image",
        required={
            "width": _res(512, 1, 1),
            "height": _res(512, 1, 1),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            "color": (
                "INT",
                {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"},
            ),
        },
        return_types=("IMAGE",),
    ),
    NodeSpec(
        name="ImageInvert",
        display_name="Invert Image",
        category="image",
        required={"image": ("IMAGE",)},
        return_types=("IMAGE",),
    ),
    NodeSpec(
        name="ImageScale",
        display_name="Upscale Image",
        category="image/upscaling",
        required={
            "image": ("IMAGE",),
            "upscale_method": (UPSCALE_METHODS,),
            "width": _res(512, 0, 1),
            "height": _res(512, 0, 1),
            "crop": (CROP_METHODS,),
        },
        return_types=("IMAGE",),
    ),
    NodeSpec(
        name="ImageBlur",
        display_name="Image Blur",
        category="image/postprocessing",
        python_module="comfy_extras.nodes_post_processing",
        required={
            "image": ("IMAGE",),
            "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
        },
        return_types=("IMAGE",),
    ),
    NodeSpec(
        name="GetImageSize",
        display_name="Get Image Size",
        category="image",
        python_module="comfy_extras.nodes_images",
        description="Returns width and height of the image, and passes it through unchanged.",
        required={"image": ("IMAGE",)},
        hidden={"unique_id": "UNIQUE_ID"},
        return_types=("INT", "INT", "INT"),
        return_names=("width", "height", "batch_size"),
        uses_unique_id=True,
    ),
    NodeSpec(
        name="PreviewAny",
        display_name="Preview Any",
        category="utils",
        python_module="comfy_extras.nodes_preview_any",
        required={"source": ("*", {})},
        output_node=True,
    ),
    NodeSpec(
        name="SaveImageWebsocket",
        display_name="SaveImageWebsocket",
        category="api node/image",
        python_module="custom_nodes.websocket_image_save",
        required={"images": ("IMAGE",)},
        output_node=True,
    ),
)

# Media: VideoHelperSuite's Video Combine (outputs under `gifs`), ComfyUI's EmptyAudio and
# SaveAudio (outputs under `audio`); sim/media_files.py writes the files.
_MEDIA_SPECS: tuple[NodeSpec, ...] = (
    NodeSpec(
        name="VHS_VideoCombine",
        display_name="Video Combine 🎥🅥🅗🅢",
        category="Video Helper Suite 🎥🅥🅗🅢",
        python_module="custom_nodes.ComfyUI-VideoHelperSuite",
        required={
            "images": ("IMAGE",),
            "frame_rate": ("FLOAT", {"default": 8, "min": 1, "step": 1}),
            "loop_count": ("INT", {"default": 0, "min": 0, "max": 100, "step": 1}),
            "filename_prefix": ("STRING", {"default": "AnimateDiff"}),
            "format": (["image/gif", "image/webp"],),
            "pingpong": ("BOOLEAN", {"default": False}),
            "save_output": ("BOOLEAN", {"default": True}),
        },
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        return_types=("VHS_FILENAMES",),
        return_names=("Filenames",),
        output_node=True,
        uses_unique_id=True,
    ),
    NodeSpec(
        name="EmptyAudio",
        display_name="Empty Audio",
        category="audio",
        python_module="comfy_extras.nodes_audio",
        required={
            "duration": (
                "FLOAT",
                {"default": 60.0, "min": 0.0, "max": 1.8446744073709552e19, "step": 0.01},
            ),
            "sample_rate": ("INT", {"default": 44100, "min": 1, "max": 192000}),
            "channels": ("INT", {"default": 2, "min": 1, "max": 2}),
        },
        return_types=("AUDIO",),
    ),
    NodeSpec(
        name="SaveAudio",
        display_name="Save Audio (FLAC)",
        category="audio",
        python_module="comfy_extras.nodes_audio",
        required={
            "audio": ("AUDIO",),
            "filename_prefix": ("STRING", {"default": "audio/ComfyUI"}),
        },
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        output_node=True,
    ),
)

CATALOGUE: Mapping[str, NodeSpec] = {spec.name: spec for spec in (*_SPECS, *_MEDIA_SPECS)}


def node_info(spec: NodeSpec, ctx: CatalogueContext) -> dict[str, Any]:
    """One `/object_info` entry, keys in ComfyUI's order."""
    inputs = spec.input_types(ctx)
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": list(spec.return_types),
        "output_is_list": [False] * len(spec.return_types),
        "output_name": list(spec.output_names),
        "name": spec.name,
        "display_name": spec.display_name,
        "description": spec.description,
        "python_module": spec.python_module,
        "category": spec.category,
        "output_node": spec.output_node,
    }
    if spec.output_tooltips is not None:
        info["output_tooltips"] = list(spec.output_tooltips)
    return info


def object_info(ctx: CatalogueContext, only: str | None = None) -> dict[str, Any]:
    if only is not None:
        spec = CATALOGUE.get(only)
        return {} if spec is None else {only: node_info(spec, ctx)}
    return {name: node_info(spec, ctx) for name, spec in CATALOGUE.items()}

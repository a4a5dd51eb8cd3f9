"""Output file naming, as ComfyUI's `folder_paths.get_save_image_path` does it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SavePath", "UnsafePath", "save_image_path"]


class UnsafePath(Exception):
    """The prefix would write outside the output folder (ComfyUI raises a plain Exception)."""


@dataclass(frozen=True)
class SavePath:
    folder: str  # absolute folder the files go to
    filename: str  # base name, before `_{counter:05}_.png`
    counter: int  # first free counter
    subfolder: str  # what `/view?subfolder=` needs


def _compute_vars(prefix: str, width: int, height: int) -> str:
    prefix = prefix.replace("%width%", str(width)).replace("%height%", str(height))
    now = time.localtime()
    for name, value in (
        ("year", now.tm_year),
        ("month", now.tm_mon),
        ("day", now.tm_mday),
        ("hour", now.tm_hour),
        ("minute", now.tm_min),
        ("second", now.tm_sec),
    ):
        pad = 4 if name == "year" else 2
        prefix = prefix.replace(f"%{name}%", str(value).zfill(pad))
    return prefix


def save_image_path(
    filename_prefix: str,
    output_dir: str,
    width: int = 0,
    height: int = 0,
    listdir: Callable[[str], list[str]] = os.listdir,
) -> SavePath:
    output_dir = os.path.abspath(output_dir)
    if "%" in filename_prefix:
        filename_prefix = _compute_vars(filename_prefix, width, height)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
    if common != output_dir:
        raise UnsafePath(
            "**** ERROR: Saving image outside the output folder is not allowed."
            "\n full_output_folder: "
            + os.path.abspath(full_output_folder)
            + "\n         output_dir: "
            + output_dir
            + "\n         commonpath: "
            + common
        )
    prefix_len = len(filename)

    def counter_of(name: str) -> tuple[int, str]:
        prefix = name[: prefix_len + 1]
        try:
            digits = int(name[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, prefix

    try:
        taken = [
            digits
            for digits, prefix in map(counter_of, listdir(full_output_folder))
            if os.path.normcase(prefix[:-1]) == os.path.normcase(filename) and prefix[-1:] == "_"
        ]
        counter = max(taken) + 1 if taken else 1
    except FileNotFoundError:
        counter = 1
    return SavePath(full_output_folder, filename, counter, subfolder)

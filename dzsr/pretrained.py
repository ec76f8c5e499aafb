"""Offline loading of pretrained weights: a user path or the torch hub checkpoints folder, never a
download. Reading the file is ``dzsr.checkpoint.read_state_dict``'s."""

from __future__ import annotations

import os

import torch

from .checkpoint import read_state_dict


def load_state_dict(filename: str, path: str | os.PathLike | None = None) -> dict:
    """The state dict ``filename`` from ``path``, else from
    ``<torch.hub.get_dir()>/checkpoints/<filename>``.

    ``path`` may be the file or a folder holding it; PyTorch and safetensors files are read, a
    ``{"state_dict": ...}`` wrapper is unwrapped. Raises FileNotFoundError naming the file and
    the folder it was looked for in, ValueError for a file that is not readable weights.
    """
    if path is not None:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained weights {filename} not found: {path} does not exist"
            )
    else:
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained weights {filename} not found in {folder}: "
                f"download it there or pass its path"
            )
    return read_state_dict(path, "pretrained weights")

"""Offline loading of pretrained weights: a user path or the torch hub checkpoints folder, never a download."""
from __future__ import annotations

import os

import torch

from .checkpoint import read_file


def load_state_dict(filename: str, path: str | os.PathLike | None = None) -> dict:
    """Load the state dict ``filename`` from ``path`` or ``<torch.hub.get_dir()>/checkpoints/<filename>``.

    A file holding ``{"state_dict": ...}`` is unwrapped. Raises FileNotFoundError naming the file and
    the folder it was looked for in, ValueError for a file that is not readable weights
    (``dzsr.checkpoint.read_file``).
    """
    if path is not None:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained weights {filename} not found: {path} does not exist")
    else:
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained weights {filename} not found in {folder}: download it there or pass its path")
    state = read_file(path, "pretrained weights")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state

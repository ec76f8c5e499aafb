"""Weights files on disk: the only code in dzsr that calls ``torch.load``, ``torch.save`` or
safetensors (docs/design.md#checkpoints).

Two containers, told apart by their first bytes, not by their names:

* PyTorch's format (``torch.save``: a zip archive, or the older bare pickle), read on the CPU with
  ``weights_only=True``: tensors and plain containers only, never other pickled Python objects.
* safetensors: an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape
  and byte range, plus ``__metadata__``, a str -> str map), then the raw tensor bytes. No code
  runs on reading it; it holds one flat {name: tensor} map.

``write_file`` picks the container from the path: ``.safetensors`` (any case) -> safetensors, any
other suffix -> ``torch.save``; it writes atomically (``dzsr.outputs.atomic_write``: the old file
survives any failure).

Reading errors: a missing path is a ``FileNotFoundError``; an empty, truncated, corrupt or foreign
file, or one that needs more than weights-only unpickling, is one ``ValueError`` "cannot read
checkpoint PATH: ..." (``what`` replaces "checkpoint", e.g. "pretrained weights"), never torch's
advice to load untrusted files with ``weights_only=False``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import safetensors
import safetensors.torch
import torch

from ..outputs import atomic_write, write_bytes

SAFETENSORS_SUFFIX = ".safetensors"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def is_safetensors_path(path: str | os.PathLike) -> bool:
    """Whether ``write_file`` writes ``path`` as safetensors (its suffix, any case)."""
    return os.fspath(path).lower().endswith(SAFETENSORS_SUFFIX)


def _looks_like_safetensors(path: str) -> bool:
    """The file starts like a safetensors file: a plausible header length, then ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= _MAX_HEADER


def _check_readable(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot read {what} {path}: the file is empty (0 bytes)")


def _read_safetensors(path: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except OSError:
        raise
    except Exception:  # noqa: BLE001 - safetensors' header and range errors
        raise ValueError(
            f"cannot read {what} {path}: a truncated or damaged safetensors file"
        ) from None


def _read_torch(path: str, what: str) -> Any:
    try:
        with warnings.catch_warnings():  # e.g. torch's pickle-protocol notes: the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - every unpickling / archive failure: not weights
        if isinstance(err, RuntimeError) and "zip archive" in str(err):
            why = "a truncated or damaged PyTorch file"
        elif "Unsupported global" in str(err):
            why = (
                "it holds Python objects other than tensors and plain containers, which dzsr "
                "does not load"
            )
        else:
            why = "not a PyTorch or safetensors checkpoint file (or a damaged one)"
        raise ValueError(f"cannot read {what} {path}: {why}") from None


def read_with_metadata(
    path: str | os.PathLike, what: str = "checkpoint"
) -> tuple[Any, dict[str, str] | None]:
    """(contents, metadata) of the file ``path``: a safetensors file gives its {name: tensor} map
    and its ``__metadata__`` (a str -> str dict, empty when it has none); a PyTorch file gives
    the object ``torch.load`` returns and None. Errors: module docstring."""
    path = os.fspath(path)
    _check_readable(path, what)
    if _looks_like_safetensors(path):
        return _read_safetensors(path, what)
    return _read_torch(path, what), None


def read_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """The contents of the file ``path`` (``read_with_metadata`` without the metadata)."""
    return read_with_metadata(path, what)[0]


def as_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """A file's contents as a flat {name: tensor} state dict: a ``{"state_dict": ...}`` wrapper
    and DataParallel's ``module.`` prefixes are dropped. Raises ValueError for anything but named
    tensors."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        what = (
            type(obj).__name__
            if not isinstance(obj, Mapping)
            else "a dict with other entries than named tensors"
        )
        raise ValueError(
            f"expected a state dict (or {{'state_dict': ...}}) of named tensors, got {what}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(
    path: str | os.PathLike, what: str = "pretrained weights"
) -> dict[str, torch.Tensor]:
    """``as_state_dict`` of the file ``path`` (published weights: PyTorch or safetensors); its
    errors name the file as ``read_file``'s do."""
    contents = read_file(path, what)
    try:
        return as_state_dict(contents)
    except ValueError as err:
        raise ValueError(f"cannot read {what} {os.fspath(path)}: {err}") from None


def write_file(
    path: str | os.PathLike, obj: Any, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``obj`` to ``path`` atomically in the container its suffix names (module docstring).

    safetensors: ``obj`` is a {name: tensor} map (written contiguous) and ``metadata`` a str -> str
    map; a tensor sharing memory with another raises ValueError. PyTorch: ``torch.save(obj)``;
    ``metadata`` must be None (put such entries into ``obj``).
    """
    if not is_safetensors_path(path):
        if metadata is not None:
            raise ValueError(
                f"{os.fspath(path)}: metadata is only written to {SAFETENSORS_SUFFIX} files"
            )
        atomic_write(path, lambda f: torch.save(obj, f))
        return
    tensors = {k: v.detach().cpu().contiguous() for k, v in obj.items()}
    try:
        data = safetensors.torch.save(tensors, metadata=dict(metadata or {}))
    except RuntimeError as err:  # tensors sharing memory
        raise ValueError(f"{os.fspath(path)}: {str(err).strip().splitlines()[0]}") from None
    write_bytes(path, data)


__all__ = [
    "SAFETENSORS_SUFFIX",
    "as_state_dict",
    "is_safetensors_path",
    "read_file",
    "read_state_dict",
    "read_with_metadata",
    "write_file",
]

"""Argument validation shared by every op: clear errors naming the argument and what was expected."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t: object, ndim: int, layout: str) -> torch.Tensor:
    """``t`` must be a floating tensor with ``ndim`` dimensions, described by ``layout``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(
            f"{name} must have shape {layout} ({ndim} dims), got shape {tuple(t.shape)}"
        )
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}"
        )
    return t


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    return first


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, layout: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name} must have shape {layout} with size {expected} at dim {dim}, got shape {tuple(t.shape)}"
        )


def check_match(
    names: Sequence[str], tensors: Sequence[torch.Tensor], dims: Sequence[int], what: str
) -> None:
    """The given dims of the tensors must agree (e.g. N, H, W between x and A)."""
    ref = [tensors[0].shape[d] for d in dims]
    for name, t in zip(names[1:], tensors[1:]):
        got = [t.shape[d] for d in dims]
        if got != ref:
            raise ValueError(
                f"{name} must match {names[0]} in {what} {tuple(ref)}, got {tuple(got)} (shape {tuple(t.shape)})"
            )


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs accumulate in float32)."""
    return (
        torch.float64
        if any(t is not None and t.dtype == torch.float64 for t in tensors)
        else torch.float32
    )


def poison_outputs() -> bool:
    return os.environ.get("DZSR_POISON") == "1"


def new_output(
    shape, dtype: torch.dtype, device: torch.device, memory_format=torch.contiguous_format
) -> torch.Tensor:
    """An output buffer for a kernel to fill, dense in ``memory_format``: uninitialised, or NaN / -1
    under DZSR_POISON=1 (tests)."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if poison_outputs():
        out.fill_(float("nan") if dtype.is_floating_point else -1)
    return out

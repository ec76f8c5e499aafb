"""KernelGen's training loss (paper eq. 9, as the authors compute it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kernel_centroid_loss(weight: torch.Tensor) -> torch.Tensor:
    """Centroid penalty of conv weights (C_out, C_in, k, k), odd k: the kernels should be centred.

    With taps indexed r = -(k//2)..k//2, it is mean over (C_out, C_in, k) of
    |mean_i(w[..., i, j] * r_i)| (per column j) + |mean_j(w[..., i, j] * r_j)| (per row i),
    the authors' ``FilterLoss``.
    """
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(
            f"weight must be (C_out, C_in, k, k) with odd k, got shape {tuple(weight.shape)}"
        )
    k = weight.shape[-1]
    r = torch.arange(-(k // 2), k // 2 + 1, device=weight.device, dtype=weight.dtype)
    rows = (weight * r.view(k, 1)).mean(2).abs()
    cols = (weight * r.view(1, k)).mean(3).abs()
    return (rows + cols).mean()


def kernel_gen_loss(
    degraded: torch.Tensor,
    lr: torch.Tensor,
    kernels: list[torch.Tensor],
    centroid_weight: float = 100.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1(degraded, lr) + centroid_weight * sum of ``kernel_centroid_loss`` over ``kernels``
    (KernelGen's 7x7, 5x5, 3x3 weights). Returns (total, {"kernel_l1", "kernel_centroid"})."""
    if degraded.shape != lr.shape:
        raise ValueError(
            f"degraded {tuple(degraded.shape)} and lr {tuple(lr.shape)} must have the same shape"
        )
    l1 = F.l1_loss(degraded, lr)
    centroid = centroid_weight * sum(kernel_centroid_loss(w) for w in kernels)
    return l1 + centroid, {"kernel_l1": l1.detach(), "kernel_centroid": centroid.detach()}

"""``cpp`` backend of the local sliced-Wasserstein loss: the fused C++ CPU forward in
``csrc/local_sliced_wasserstein/`` and the GEMM backward it shares with the global loss
(``torch.ops.dzsr_C.sliced_wasserstein_backward``, which reads int8 or int32 coefficients)."""

from __future__ import annotations

import torch


def forward(u, v, proj, window, stride, need_v_count):
    """(loss, count_u, count_v) for u, v (N, C, H, W) and proj (C', C) in the compute dtype, as the
    ``op`` module docstring describes."""
    return torch.ops.dzsr_C.local_sliced_wasserstein_forward(
        u, v, proj.contiguous(), window, stride, need_v_count
    )


def backward(count, proj_scaled):
    """proj_scaled^T @ count[n] per sample for count int32 (N, C', H*W) and proj_scaled (C', C):
    (N, C, H*W) in proj_scaled's dtype."""
    return torch.ops.dzsr_C.sliced_wasserstein_backward(count, proj_scaled.contiguous())

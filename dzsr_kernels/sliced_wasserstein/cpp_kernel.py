"""``cpp`` backend of the sliced-Wasserstein loss: the fused C++ CPU forward and CUDA forward in
``csrc/sliced_wasserstein/`` and their shared ATen backward (``torch.ops.dzsr_C.sliced_wasserstein_*``)."""

from __future__ import annotations

import torch


def forward(u, v, proj, need_v_sign):
    """(loss, sign_u, sign_v) for u, v (N, C, H, W) and proj (C', C) in the compute dtype, as the
    ``op`` module docstring describes."""
    return torch.ops.dzsr_C.sliced_wasserstein_forward(u, v, proj.contiguous(), need_v_sign)


def backward(sign, proj_scaled):
    """proj_scaled^T @ sign[n] per sample for sign int8 (N, C', H*W) and proj_scaled (C', C):
    (N, C, H*W) in proj_scaled's dtype."""
    return torch.ops.dzsr_C.sliced_wasserstein_backward(sign, proj_scaled.contiguous())

"""``cpp`` backend of the sliced-Wasserstein loss: the fused C++ CPU forward and CUDA forward in
``csrc/sliced_wasserstein/`` and their shared ATen backward (``torch.ops.dzsr_C.sliced_wasserstein_*``)."""

from __future__ import annotations

import torch


def forward(u, v, proj, need_v_sign):
    return torch.ops.dzsr_C.sliced_wasserstein_forward(u, v, proj.contiguous(), need_v_sign)


def backward(sign, proj_scaled):
    return torch.ops.dzsr_C.sliced_wasserstein_backward(sign, proj_scaled.contiguous())

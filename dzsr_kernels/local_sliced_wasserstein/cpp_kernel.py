"""``cpp`` backend of the local sliced-Wasserstein loss: the fused forward of
``csrc/local_sliced_wasserstein/`` (C++ on the CPU, CUDA on the GPU) and the GEMM backward it shares
with the global loss (``torch.ops.dzsr_C.sliced_wasserstein_backward``, which reads int8 or int32
coefficients)."""

from __future__ import annotations

import torch

# Map pixels one band of the CUDA kernel holds per compute dtype (``kBand`` in
# local_sliced_wasserstein_cuda.cu: the band's keys and sign sums live in a block's shared memory):
# it runs when window * W fits, which covers every window of SelfDZSR++'s training (k = 8 at W = 48
# uses 384). Larger windows run the reference on CUDA.
CUDA_BAND_PIXELS = {torch.float32: 2048, torch.float64: 1024}


def supports(device: torch.device, width: int, window: int, dtype: torch.dtype) -> bool:
    """Whether the fused forward runs features of width ``width`` with ``window`` in the compute
    ``dtype`` on ``device``: always on the CPU; on CUDA while window * width fits a band."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and window * width <= CUDA_BAND_PIXELS[dtype]


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

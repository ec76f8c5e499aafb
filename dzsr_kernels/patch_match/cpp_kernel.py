"""``cpp`` backend of patch matching: C++ CPU and CUDA kernels in ``csrc/patch_match/``
(registered as ``torch.ops.dzsr_C.patch_match``), on the inputs built by ``reference.prepare``."""

from __future__ import annotations

import torch

CUDA_MAX_PATCH = 7  # the CUDA kernel's pixel tiles (8x16 query, 8x8 reference) must hold a patch


def match(uq, ur, inv_q, inv_r, p, precision):
    """(score float32, index int64), each contiguous (N,Hpq,Wpq), from the prepared inputs (kernel
    interface in ``op``). ValueError for ``precision`` other than "exact", and on CUDA for ``p``
    above ``CUDA_MAX_PATCH``."""
    if precision != "exact":
        raise ValueError(
            f"the cpp patch-match kernels compute in float32 only, got precision={precision!r}"
        )
    if uq.device.type == "cuda" and p > CUDA_MAX_PATCH:
        raise ValueError(
            f"the CUDA patch-match kernel supports patch_size <= {CUDA_MAX_PATCH}, got {p}; "
            "use the triton or reference backend"
        )
    return torch.ops.dzsr_C.patch_match(uq, ur, inv_q, inv_r, p)

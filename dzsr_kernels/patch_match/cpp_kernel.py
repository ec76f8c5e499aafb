"""``cpp`` backend of patch matching: C++ CPU and CUDA kernels in ``csrc/patch_match/``
(registered as ``torch.ops.dzsr_C.patch_match``), on the inputs built by ``reference.prepare``."""
from __future__ import annotations

import torch


def match(uq, ur, inv_q, inv_r, p, precision):
    if precision != "float32":
        raise ValueError(f"the cpp patch-match kernels compute in float32 only, got precision={precision!r}")
    return torch.ops.dzsr_C.patch_match(uq, ur, inv_q, inv_r, p)

"""Turning 3x3 patch matches into the offsets of the flow-guided deformable conv (C2-Matching style),
with the exact semantics of the authors' ``CorrespondenceGeneration`` (SelfDZSR models/networks.py)
and the upsampling in ``SelfRefSR.forward``.

Conventions: ``flow`` is (N, 2, H, W) with channel 0 = dy and channel 1 = dx (torchvision's offset
order; the authors build (x, y) pairs internally and reorder them to (dy, dx) in the offset). The
flow of query patch (y, x) is stored at its top-left pixel (y, x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_tensor

PATCH = 3


def match_flow(index: torch.Tensor, ref_size) -> torch.Tensor:
    """Best-match index -> flow, reference patch position minus query patch position.

    index: int64 (N, Hq-2, Wq-2) from ``patch_match`` (3x3 patches); ref_size: (Hr, Wr) of the
    reference feature map the index points into (its patch grid is (Hr-2)x(Wr-2)). Returns float32
    (N, 2, Hq, Wq): flow[:, 0] = index // (Wr-2) - y, flow[:, 1] = index % (Wr-2) - x, padded with
    zeros by 2 rows at the bottom and 2 columns at the right as the authors do. (The authors take the
    modulus by the query grid width; they always match maps of equal size, where the two agree.)
    """
    if not isinstance(index, torch.Tensor) or index.dim() != 3 or index.dtype != torch.int64:
        got = (
            f"{index.dtype} shape {tuple(index.shape)}"
            if isinstance(index, torch.Tensor)
            else type(index).__name__
        )
        raise TypeError(f"index must be an int64 tensor of shape (N, Hq-2, Wq-2), got {got}")
    if len(ref_size) != 2 or any(int(s) < PATCH for s in ref_size):
        raise ValueError(f"ref_size must be (Hr, Wr) with both >= {PATCH}, got {tuple(ref_size)}")
    hpr, wpr = int(ref_size[0]) - PATCH + 1, int(ref_size[1]) - PATCH + 1
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= hpr * wpr):
        raise ValueError(
            f"index values must lie in [0, {hpr * wpr}) for ref_size {tuple(ref_size)}"
        )
    n, hp, wp = index.shape
    ys = torch.arange(hp, device=index.device).view(1, hp, 1)
    xs = torch.arange(wp, device=index.device).view(1, 1, wp)
    flow = torch.stack([index // wpr - ys, index % wpr - xs], dim=1).float()
    return F.pad(flow, (0, PATCH - 1, 0, PATCH - 1))


def flow_to_offsets(flow: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Flow (N, 2, H, W) -> 18-channel offsets for a 3x3 ``deform_conv2d`` (torchvision layout).

    Tap t = 3*i + j (i, j in 0..2) gets the flow shifted down by i rows and right by j columns (zeros
    fill the uncovered top rows / left columns): offset[:, 2t] = dy, offset[:, 2t+1] = dx of
    flow[:, :, y-i, x-j]. So at pixel P, tap (i, j) samples P + (i-1, j-1) + flow of the patch that
    contains P at its (i, j) position. With ``scale`` > 1 the field is then upsampled as the authors
    do, ``F.interpolate(offset, scale_factor=scale, mode='bilinear', align_corners=True) * scale``
    (their features are 4x the matching grid, so scale=4): the result is (N, 18, scale*H, scale*W).
    """
    check_tensor("flow", flow, 4, "(N, 2, H, W)")
    if flow.shape[1] != 2:
        raise ValueError(f"flow must have shape (N, 2, H, W), got {tuple(flow.shape)}")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    h, w = flow.shape[2:]
    copies = []
    for i in range(PATCH):
        for j in range(PATCH):
            copies.append(F.pad(flow, (j, 0, i, 0))[:, :, :h, :w])
    offset = torch.cat(copies, dim=1)
    if scale == 1:
        return offset
    return F.interpolate(offset, scale_factor=scale, mode="bilinear", align_corners=True) * scale

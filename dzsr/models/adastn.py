"""AdaSTN: adaptive spatial transformer (paper §3.3), built on ``dzsr_kernels.AffineDeformConv2d``.

An offset estimator looks at the features ``x`` and the target features ``target`` (both
(N,64,H,W)) and predicts per pixel an affine matrix A (N,4,H,W), row-major [[A0,A1],[A2,A3]] acting
on the tap grid vector (gy,gx), and a translation b (N,2,H,W) as (by,bx). A depthwise 3x3
deformable conv (no bias) samples tap g at q + A g + b, followed by LeakyReLU(0.2).

P=0 means A=0, b=0: every tap reads the centre pixel, an exact 1x1 depthwise conv.

Stages (``forward`` composes them): ``estimate`` (the offset estimator, local with halo
``estimate_halo``) and ``transform`` (the deformable conv: global, its taps may land anywhere,
unless it runs the P=0 path, which is per pixel).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dzsr_kernels import AffineDeformConv2d

from .blocks import autocast_off, conv_halo


class OffsetEstimator(nn.Module):
    """(x, target) -> (A, b). Concatenate [x, target] (128 channels), depthwise 3x3 conv, grouped
    3x3 conv 128 -> 64 with 64 groups (output c reads input channels 2c, 2c+1), each followed by
    LeakyReLU(0.2); then 5x5 convs to A (N,4,H,W) and b (N,2,H,W)."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.pair_conv = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels)
        self.group_conv = nn.Conv2d(2 * channels, channels, 3, padding=1, groups=channels)
        self.to_matrix = nn.Conv2d(channels, 4, 5, padding=2)
        self.to_translation = nn.Conv2d(channels, 2, 5, padding=2)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (N,4,H,W), b (N,2,H,W)) from x and target (N,64,H,W) (class docstring)."""
        h = F.leaky_relu(self.pair_conv(torch.cat([x, target], 1)), 0.2)
        h = F.leaky_relu(self.group_conv(h), 0.2)
        return self.to_matrix(h), self.to_translation(h)

    @property
    def halo(self) -> int:
        """The two chained convs' halos plus the larger of the two parallel output convs'."""
        return (
            conv_halo(self.pair_conv)
            + conv_halo(self.group_conv)
            + max(conv_halo(self.to_matrix), conv_halo(self.to_translation))
        )


class AdaSTN(nn.Module):
    """``forward(x, target, use_offsets)`` -> (N,64,H,W).

    ``use_offsets=False`` runs the P=0 path (a 1x1 conv; the estimator is not evaluated), as the
    LR AdaSTNs do at test time. In training mode with ``drop_prob > 0``, each sample's (A, b) is
    replaced by P=0 with probability ``drop_prob`` (drawn with ``torch.rand``, so ``torch.manual_seed``
    fixes it); the reference AdaSTN uses ``drop_prob=0``.
    """

    def __init__(self, channels: int = 64, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob = drop_prob
        self.offsets = OffsetEstimator(channels)
        self.deform = AffineDeformConv2d(channels, channels, 3, groups=channels, bias=False)

    def forward(
        self, x: torch.Tensor, target: torch.Tensor, use_offsets: bool = True
    ) -> torch.Tensor:
        """``transform(x, *estimate(x, target))`` for x and target (N,64,H,W), or ``transform(x)``
        (P=0) when not ``use_offsets``: (N,64,H,W)."""
        if not use_offsets:
            return self.transform(x)
        return self.transform(x, *self.estimate(x, target))

    def estimate(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (N,4,H,W), b (N,2,H,W)) from x and target (N,64,H,W); in training mode each sample's
        pair is zeroed (P=0) with probability ``drop_prob``."""
        A, b = self.offsets(x, target)
        if self.training and self.drop_prob > 0:
            keep = (
                (torch.rand(x.shape[0], device=x.device) >= self.drop_prob)
                .to(A.dtype)
                .view(-1, 1, 1, 1)
            )
            A, b = A * keep, b * keep
        return A, b

    @property
    def estimate_halo(self) -> int:
        """Halo of ``estimate``: the offset estimator's."""
        return self.offsets.halo

    def transform(
        self, x: torch.Tensor, A: torch.Tensor | None = None, b: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The deformable conv at taps q + A g + b, then LeakyReLU(0.2): (N,64,H,W). Without A and
        b the P=0 path, a per-pixel (1x1 depthwise) conv. The deformable conv runs in the weights'
        dtype (float32) also inside ``torch.autocast`` (x, A and b are cast to it); the P=0 conv
        follows autocast like any convolution."""
        if A is None or b is None:
            return F.leaky_relu(self.deform(x, A, b), 0.2)
        dtype = self.deform.weight.dtype
        with autocast_off(x):
            out = self.deform(x.to(dtype), A.to(dtype), b.to(dtype))
        return F.leaky_relu(out, 0.2)

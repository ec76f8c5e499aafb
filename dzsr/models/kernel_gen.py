"""KernelGen, the degradation network (paper §3.2): GT (N,3,sH,sW) + LR (N,3,H,W) -> degraded GT
(N,3,H,W) that imitates the LR's blur, used to build the pseudo-LR during training.

Space-to-depth of the GT (authors' channel order, ``blocks.space_to_depth``), 1x1 head with ReLU,
a global guidance vector g from [space-to-depth(GT), LR] modulating the head as h*g + h, then
7x7, 5x5, 3x3 convs (ReLU each), three 1x1 convs (ReLU each), residual from the head, 1x1 tail.
Images are mean-shifted in and out.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import MeanShift, space_to_depth


class KernelGen(nn.Module):
    """``forward(gt, lr) -> (degraded (N,3,H,W), [w7x7, w5x5, w3x3])``; the weights are returned for
    the kernel centroid loss (``dzsr.losses.kernel_gen_loss``). GT H, W must be ``scale`` x LR's,
    and the LR at least 7x7 (the guidance stem is a 7x7 stride-2 valid conv)."""

    def __init__(self, scale: int = 4, channels: int = 64):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
        self.scale = scale
        c_s2d = 3 * scale * scale
        self.mean_sub = MeanShift(-1)
        self.mean_add = MeanShift(+1)
        self.head = nn.Conv2d(c_s2d, channels, 1)
        self.guide = nn.Sequential(
            nn.Conv2d(c_s2d + 3, channels, 7, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels, 1),
        )
        self.conv7 = nn.Conv2d(channels, channels, 7, padding=3)
        self.conv5 = nn.Conv2d(channels, channels, 5, padding=2)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.pointwise = nn.Sequential(
            *[m for _ in range(3) for m in (nn.Conv2d(channels, channels, 1), nn.ReLU())]
        )
        self.tail = nn.Conv2d(channels, 3, 1)

    def blur_kernels(self) -> list[torch.Tensor]:
        """The 7x7, 5x5 and 3x3 conv weights, regularised by the centroid loss."""
        return [self.conv7.weight, self.conv5.weight, self.conv3.weight]

    def forward(
        self, gt: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(degraded (N,3,H,W), [w7x7, w5x5, w3x3]) from ``gt`` (N,3,sH,sW) and ``lr`` (N,3,H,W)
        (module docstring); ValueError unless gt is ``scale`` x the LR's size."""
        s = self.scale
        if gt.shape[-2] != s * lr.shape[-2] or gt.shape[-1] != s * lr.shape[-1]:
            raise ValueError(
                f"gt must be {s}x the LR size: gt {tuple(gt.shape)}, lr {tuple(lr.shape)}"
            )
        gt_s2d = space_to_depth(self.mean_sub(gt), s)
        g = self.guide(torch.cat([gt_s2d, self.mean_sub(lr)], 1))
        head = F.relu(self.head(gt_s2d))
        h = head * g + head
        h = F.relu(self.conv3(F.relu(self.conv5(F.relu(self.conv7(h))))))
        h = self.pointwise(h) + head
        return self.mean_add(self.tail(h)), self.blur_kernels()

"""The combined SelfDZSR training objective (the authors' ``RefSRModel.backward``).

total = L1(sr, gt) + sw_weight * SW(sr, gt)                        (restoration network)
      + L1(degraded, lr) + 100 * centroid(7x7, 5x5, 3x3 kernels)   (KernelGen)

The two parts share no parameters (the pseudo-LR is detached), so one backward trains both
networks, each from its own part. ``sw_loss`` is e.g. ``dzsr.losses.SWLoss()`` (VGG-19 sliced
Wasserstein, already scaled by the authors' 0.08); None trains with L1 only (the "l1" checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernel import kernel_gen_loss


class SelfDZSRObjective(nn.Module):
    """``forward(output, gt, lr) -> (total, parts)`` for a ``dzsr.models.SelfDZSROutput`` from a
    training forward (gt and noise given). parts: detached scalars restoration_l1, restoration_sw
    (when used), kernel_l1, kernel_centroid."""

    def __init__(
        self,
        sw_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        sw_weight: float = 1.0,
        centroid_weight: float = 100.0,
    ):
        super().__init__()
        self.sw_loss = sw_loss
        self.sw_weight = sw_weight
        self.centroid_weight = centroid_weight

    def forward(
        self, output, gt: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)`` for ``output`` (``sr`` (N,3,sH,sW), ``degraded`` (N,3,H,W),
        ``kernels``), ``gt`` (N,3,sH,sW) and ``lr`` (N,3,H,W): total a 0-dim tensor (formula in the
        module docstring), parts as in the class docstring. ValueError for an output without
        ``degraded`` or ``kernels``."""
        if output.degraded is None or output.kernels is None:
            raise ValueError(
                "output must come from a training forward (pass gt= and noise= to the model)"
            )
        if output.sr.shape != gt.shape:
            raise ValueError(
                f"sr {tuple(output.sr.shape)} and gt {tuple(gt.shape)} must have the same shape"
            )
        l1 = F.l1_loss(output.sr, gt)
        total = l1
        parts = {"restoration_l1": l1.detach()}
        if self.sw_loss is not None:
            sw = self.sw_loss(output.sr, gt)
            total = total + self.sw_weight * sw
            parts["restoration_sw"] = sw.detach()
        kernel_total, kernel_parts = kernel_gen_loss(
            output.degraded, lr, output.kernels, self.centroid_weight
        )
        parts.update(kernel_parts)
        return total + kernel_total, parts

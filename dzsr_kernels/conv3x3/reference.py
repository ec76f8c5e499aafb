"""The oracle of ``conv3x3``: PyTorch's own convolution (oneDNN on the CPU, cuDNN on CUDA), then the
fused epilogue op by op.

x (N, C, H, W), weight (C', C, 3, 3), bias (C',) or None, one floating dtype and device ->
(N, C', H, W): z[n, o, y, x] = bias[o] + sum_{c, i, j} weight[o, c, i, j] x[n, c, y+i-1, x+j-1],
with x zero outside the image; then ``z + residual`` when a residual (N, C', H, W) is given, then
``relu`` (``negative_slope`` 0) or ``leaky_relu(negative_slope)`` when a slope is given. NaN and
inf propagate by that arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def epilogue(
    z: torch.Tensor, residual: torch.Tensor | None, negative_slope: float | None
) -> torch.Tensor:
    """The module docstring's epilogue of a convolution output ``z``: ``z + residual`` (when given),
    then unchanged (slope None), ``F.relu`` (0.0) or ``F.leaky_relu`` with that slope."""
    if residual is not None:
        z = z + residual
    if negative_slope is None:
        return z
    return F.relu(z) if negative_slope == 0 else F.leaky_relu(z, negative_slope)


def conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
    negative_slope: float | None = None,
) -> torch.Tensor:
    """The module docstring's convolution and epilogue, by ``F.conv2d`` and torch's elementwise ops."""
    return epilogue(F.conv2d(x, weight, bias, padding=1), residual, negative_slope)

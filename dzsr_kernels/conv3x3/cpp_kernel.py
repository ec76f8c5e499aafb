"""``cpp`` backend of ``conv3x3``: the CPU Winograd F(4x4, 3x3) kernel of ``csrc/conv3x3/``
(``torch.ops.dzsr_C.conv3x3``). It has no CUDA kernel (cuDNN already uses Winograd there), so
``supports`` sends every other case to the reference."""

from __future__ import annotations

import torch

# Fewest input channels the kernel runs: below them the transforms cost more than the three
# quarters of the multiplications they save (benchmarks/bench_conv3x3.py on the 2-core CPU: 3 -> 64
# and 6 -> 64 channels run at 0.7x and 1.0x oneDNN's direct kernel, 8 -> 64 at 1.3x; any number of
# output channels pays, 64 -> 3 at 1.4x).
MIN_IN_CHANNELS = 8


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel runs this call (``op._validate`` has checked the arguments): CPU
    float32/float64 inputs, at least ``MIN_IN_CHANNELS`` input channels, outside autocast (whose
    float32 -> bfloat16 casts the custom op would skip) and outside an export or trace (which
    records ``conv2d``)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.shape[1] >= MIN_IN_CHANNELS
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
    )


def forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    negative_slope: float | None,
) -> torch.Tensor:
    """(N, C', H, W) channels-last, x's dtype; inputs as in ``reference.conv3x3``."""
    return torch.ops.dzsr_C.conv3x3(x, weight.contiguous(), bias, residual, negative_slope)

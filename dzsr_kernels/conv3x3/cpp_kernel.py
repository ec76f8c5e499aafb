"""``cpp`` backend of ``conv3x3``: the CPU Winograd F(4x4, 3x3) kernel of ``csrc/conv3x3/``
(``torch.ops.dzsr_C.conv3x3``). It has no CUDA kernel (cuDNN already uses Winograd there), so
``supports`` sends every other case to the reference."""

from __future__ import annotations

import torch

from .. import _ext

# The kernel's vector: 64 bytes where the compiler targets AVX-512 (the C++ is built with
# -march=native, so that is where this CPU has avx512f; ``#if defined(__AVX512F__)`` in
# conv3x3_cpu.cpp), 32 bytes elsewhere. Channels are its lanes, and channels past the last full
# vector take a scalar path.
VECTOR_BYTES = 64 if "avx512f" in _ext.native_cpu().split() else 32


def min_in_channels(dtype: torch.dtype) -> int:
    """Fewest input channels the kernel runs: one full vector of them, and at least 8. Below that
    the transforms cost more than the three quarters of the multiplications they save
    (``benchmarks/bench_conv3x3.py``, float32, 2-core CPU; on AVX2 3 -> 64 and 6 -> 64 channels ran
    at 0.7x and 1.0x oneDNN's direct kernel, 8 -> 64 at 1.3x; with AVX-512's 16 lanes 8 and 12 -> 64
    ran at 0.80-0.98x, 16 -> 64 at 1.6x; any number of output channels pays, 64 -> 3 at
    1.2-1.4x)."""
    return max(8, VECTOR_BYTES // (torch.finfo(dtype).bits // 8))


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel runs this call (``op._validate`` has checked the arguments): CPU
    float32/float64 inputs, at least ``min_in_channels`` input channels, outside autocast (whose
    float32 -> bfloat16 casts the custom op would skip) and outside an export or trace (which
    records ``conv2d``)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.shape[1] >= min_in_channels(x.dtype)
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

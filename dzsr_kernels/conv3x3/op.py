"""Public 3x3 convolution (stride 1, zero padding 1, no groups), its checks and its custom op.

``conv3x3(x, weight, bias)`` computes what ``F.conv2d(x, weight, bias, padding=1)`` computes
(``reference.py``). Under the ``cpp`` backend (``auto`` on the CPU) float32 and float64 inputs with
at least 8 input channels run Winograd's F(4x4, 3x3) (``csrc/conv3x3/conv3x3_cpu.cpp``),
a quarter of direct convolution's multiplications; everything else, and every other backend
(there is no Triton or CUDA kernel: cuDNN already runs Winograd on CUDA), runs the reference.

The custom op ``dzsr::conv3x3(x, weight, bias, backend) -> out``: out (N, C', H, W) in x's dtype,
always channels-last (the kernel's layout); the fake below allocates exactly that. Rounding: a few
ulps more than direct convolution (the transforms; docs/design.md#winograd-convolution). Every
output pixel's arithmetic depends only on the 6x6 input window of its 4x4 tile and on its position
modulo 4, so on a crop whose origin is a multiple of 4 pixels every tile whose window reads no
padding of the crop gives the same values as the whole map. NaN, inf or inputs too large for the
transforms to stay finite make the kernel run the reference for the whole call, so such inputs give
exactly the reference's output. The backward is the reference's (``aten.convolution_backward``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import _backend, _checks
from . import cpp_kernel, reference

OP = "conv3x3"

# Backend name -> the module holding its kernel; ``reference`` has no entry.
KERNELS = {"cpp": lambda: cpp_kernel}
_backend.register_op(OP, {"reference", *KERNELS})


@torch.library.custom_op("dzsr::conv3x3", mutates_args=())
def _conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str
) -> torch.Tensor:
    return KERNELS[backend]().forward(x, weight, bias)


@_conv3x3.register_fake
def _(x, weight, bias, backend):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.bias_sizes = None if bias is None else list(bias.shape)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.bias_sizes is not None]
    dx, dweight, dbias = torch.ops.aten.convolution_backward(
        grad, x, weight, ctx.bias_sizes, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
    )
    return dx, dweight, dbias if ctx.needs_input_grad[2] else None, None


_conv3x3.register_autograd(_backward, setup_context=_setup_context)


def _validate(x: object, weight: object, bias: object) -> None:
    _checks.check_tensor("x", x, 4, "(N, C, H, W)")
    _checks.check_tensor("weight", weight, 4, "(C', C, 3, 3)")
    if tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        raise ValueError(
            f"weight must have shape (C', C, 3, 3) with C = x's {x.shape[1]} channels, got shape "
            f"{tuple(weight.shape)}"
        )
    if min(x.shape[1:]) < 1:
        raise ValueError(
            f"x must have at least one channel, row and column (N, C, H, W), got shape "
            f"{tuple(x.shape)}"
        )
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one output channel (C', C, 3, 3), got C' = 0")
    if bias is not None:
        _checks.check_tensor("bias", bias, 1, "(C',)")
        _checks.check_dim("bias", bias, 0, weight.shape[0], "(C',)")
    _checks.check_same_device(x=x, weight=weight, bias=bias)
    if torch.is_autocast_enabled(x.device.type):
        return  # conv2d casts them itself
    dtypes = {t.dtype for t in (x, weight, bias) if t is not None}
    if len(dtypes) > 1:
        raise TypeError(f"x, weight and bias must have one dtype, got {sorted(map(str, dtypes))}")


def conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for x (N, C, H, W) in any layout, weight
    (C', C, 3, 3), bias (C',) or None, of one floating dtype and device; (N, C', H, W) in x's dtype,
    channels-last where the Winograd kernel ran (module docstring). Gradients flow to x, weight and
    bias. Under autocast it is ``F.conv2d`` (mixed dtypes allowed: autocast casts them). Errors:
    TypeError for a wrong type or mixed dtypes, ValueError for a wrong shape or
    device (x with no channel, row or column included: F.conv2d fails or misshapes those), each
    naming the argument."""
    _validate(x, weight, bias)
    if _backend.requested_backend() in ("auto", "cpp") and cpp_kernel.supports(x):
        backend = _backend.resolve(OP, x.device)
        if backend in KERNELS:
            return _conv3x3(x, weight, bias, backend)
    return reference.conv3x3(x, weight, bias)


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, 3, stride, padding=1, groups)`` (same parameters, same state dict)
    whose stride-1 ungrouped forward runs ``conv3x3``: the model's convolutions of this shape take
    the Winograd kernel on the CPU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, 3, stride=stride, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> (N, C', H, W) (H/stride, W/stride when strided)."""
        if self.stride != (1, 1) or self.groups != 1:
            return super().forward(x)
        return conv3x3(x, self.weight, self.bias)

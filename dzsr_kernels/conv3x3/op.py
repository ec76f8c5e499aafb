"""Public 3x3 convolution (stride 1, zero padding 1, no groups) with a fused epilogue, its checks and
its custom op.

``conv3x3(x, weight, bias, residual=None, negative_slope=None)`` computes what
``act(F.conv2d(x, weight, bias, padding=1) + residual)`` computes (``reference.py``; act is ReLU for
slope 0, LeakyReLU for a positive slope, none for None). The epilogue is applied to each output
tile while it is in registers: in the restoration body's residual blocks and after the encoders'
convolutions, that saves the separate add or activation pass over a whole feature map (one read
and one write of it, or two reads and a write for the add). Under the ``cpp`` backend (``auto`` on
the CPU) float32 and float64 inputs with at least ``cpp_kernel.min_in_channels`` input channels (one
vector of the kernel's width, at least 8) run Winograd's F(4x4, 3x3)
(``csrc/conv3x3/conv3x3_cpu.cpp``), a quarter of direct convolution's multiplications; everything
else, and every other backend (there is no Triton or CUDA kernel: cuDNN already runs Winograd on
CUDA), runs the reference.

The custom op ``dzsr::conv3x3(x, weight, bias, residual, negative_slope, backend) -> out``: out
(N, C', H, W) in x's dtype, always channels-last (the kernel's layout); the fake below allocates
exactly that. Rounding: a few
ulps more than direct convolution (the transforms; docs/design.md#winograd-convolution). Every
output pixel's arithmetic depends only on the 6x6 input window of its 4x4 tile and on its position
modulo 4, so on a crop whose origin is a multiple of 4 pixels every tile whose window reads no
padding of the crop gives the same values as the whole map. NaN, inf or inputs too large for the
transforms to stay finite in x, weight or bias make the kernel run the reference for the whole call,
so such inputs give exactly the reference's output (a residual is only added, so its non-finite
values propagate as in the reference). The epilogue adds the rounded convolution output to the
residual and then applies the activation, the reference's order, so it adds no rounding. The
backward is the reference's: the activation's derivative from the output (``threshold_backward``,
``leaky_relu_backward`` on the result, as torch's in-place activations do; this is why the slope
must not be negative), then ``aten.convolution_backward``; the residual's gradient is the
activation's.
"""

from __future__ import annotations

import math

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
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    negative_slope: float | None,
    backend: str,
) -> torch.Tensor:
    return KERNELS[backend]().forward(x, weight, bias, residual, negative_slope)


@_conv3x3.register_fake
def _(x, weight, bias, residual, negative_slope, backend):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _, negative_slope, _ = inputs
    ctx.save_for_backward(x, weight, None if negative_slope is None else output)
    ctx.bias_sizes = None if bias is None else list(bias.shape)
    ctx.negative_slope = negative_slope


def _activation_backward(grad, out, negative_slope):
    """The activation's gradient from its output (module docstring)."""
    if negative_slope is None:
        return grad
    if negative_slope == 0:
        return torch.ops.aten.threshold_backward(grad, out, 0)
    return torch.ops.aten.leaky_relu_backward(grad, out, negative_slope, True)


def _backward(ctx, grad):
    x, weight, out = ctx.saved_tensors
    grad = _activation_backward(grad, out, ctx.negative_slope)
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.bias_sizes is not None]
    dx, dweight, dbias = torch.ops.aten.convolution_backward(
        grad, x, weight, ctx.bias_sizes, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
    )
    dbias = dbias if ctx.needs_input_grad[2] else None
    return dx, dweight, dbias, grad if ctx.needs_input_grad[3] else None, None, None


_conv3x3.register_autograd(_backward, setup_context=_setup_context)


def check_epilogue(
    residual: object, negative_slope: object, shape: tuple[int, ...], like: torch.Tensor
) -> None:
    """``residual`` None or a floating tensor of the output's ``shape`` on ``like``'s device (no
    broadcasting); ``negative_slope`` None or a finite real number >= 0; otherwise TypeError or
    ValueError naming the argument."""
    if residual is not None:
        _checks.check_tensor("residual", residual, 4, "(N, C', H, W)")
        if tuple(residual.shape) != tuple(shape):
            raise ValueError(
                f"residual must have the output's shape {tuple(shape)} (N, C', H, W), got shape "
                f"{tuple(residual.shape)}"
            )
        _checks.check_same_device(x=like, residual=residual)
    if negative_slope is None:
        return
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(
            f"negative_slope must be None or a number >= 0, got {type(negative_slope).__name__}"
        )
    if not math.isfinite(negative_slope) or negative_slope < 0:
        raise ValueError(
            f"negative_slope must be None (no activation), 0 (ReLU) or a finite slope > 0 "
            f"(LeakyReLU), got {negative_slope}"
        )


def _validate(
    x: object, weight: object, bias: object, residual: object, negative_slope: object
) -> None:
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
    shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    check_epilogue(residual, negative_slope, shape, x)
    if torch.is_autocast_enabled(x.device.type):
        return  # conv2d casts them itself
    dtypes = {t.dtype for t in (x, weight, bias, residual) if t is not None}
    if len(dtypes) > 1:
        raise TypeError(
            f"x, weight, bias and residual must have one dtype, got {sorted(map(str, dtypes))}"
        )


def conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    residual: torch.Tensor | None = None,
    negative_slope: float | None = None,
) -> torch.Tensor:
    """``act(F.conv2d(x, weight, bias, padding=1) + residual)`` for x (N, C, H, W) in any layout,
    weight (C', C, 3, 3), bias (C',) or None, residual (N, C', H, W) in any layout or None, of one
    floating dtype and device; act ReLU for ``negative_slope`` 0, LeakyReLU for a slope > 0, none
    for None. Returns (N, C', H, W) in x's dtype, channels-last where the Winograd kernel ran
    (module docstring). Gradients flow to x, weight, bias and residual. Under autocast it is the
    reference (mixed dtypes allowed: autocast casts them, the residual's dtype promotes). Errors:
    TypeError for a wrong type or mixed dtypes, ValueError for a wrong shape (a residual is never
    broadcast), device or slope (x with no channel, row or column included: F.conv2d fails or
    misshapes those), each naming the argument."""
    _validate(x, weight, bias, residual, negative_slope)
    if _backend.requested_backend() in ("auto", "cpp") and cpp_kernel.supports(x):
        backend = _backend.resolve(OP, x.device)
        if backend in KERNELS:
            slope = None if negative_slope is None else float(negative_slope)
            return _conv3x3(x, weight, bias, residual, slope, backend)
    return reference.conv3x3(x, weight, bias, residual, negative_slope)


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, 3, stride, padding=1, groups)`` (same parameters, same state dict)
    whose stride-1 ungrouped forward runs ``conv3x3``: the model's convolutions of this shape take
    the Winograd kernel on the CPU, with the residual add and activation fused when given."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, 3, stride=stride, padding=1, groups=groups)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        negative_slope: float | None = None,
    ) -> torch.Tensor:
        """x (N, C, H, W) -> act(conv(x) + residual) (N, C', H, W) (H/stride, W/stride when
        strided), residual and ``negative_slope`` as in ``conv3x3``."""
        if self.stride == (1, 1) and self.groups == 1:
            return conv3x3(
                x, self.weight, self.bias, residual=residual, negative_slope=negative_slope
            )
        z = super().forward(x)
        check_epilogue(residual, negative_slope, tuple(z.shape), z)
        return reference.epilogue(z, residual, negative_slope)

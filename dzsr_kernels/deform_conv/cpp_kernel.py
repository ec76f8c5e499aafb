"""``cpp`` backend of the packed deformable convolution: C++ CPU and CUDA kernels in
``csrc/deform_conv/`` (registered as ``torch.ops.dzsr_C.deform_conv2d_{forward,backward}``)."""

from __future__ import annotations

import torch


def _kernel_input(t):
    """t as the C++ op takes it: contiguous, or channels-last as it is: the CUDA kernels read
    channels-last x and grad_out in place (csrc/deform_conv/deform_conv_cuda.cu), as does the CPU
    depthwise forward (csrc/deform_conv/deform_conv_cpu.cpp; the CPU's other paths copy it)."""
    if t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def forward(x, geom, affine, weight, bias, groups):
    """out (N, C_out, H, W) in x's dtype (channels-last from the channels-last depthwise paths,
    else contiguous); inputs as in ``reference.deform_conv2d``."""
    return torch.ops.dzsr_C.deform_conv2d_forward(
        _kernel_input(x), geom.contiguous(), affine, weight.contiguous(), bias, groups
    )


def backward(grad_out, x, geom, affine, weight, groups):
    """(dx, dgeom, dweight), each in its input's dtype and shape (dx as out in ``forward``)."""
    return torch.ops.dzsr_C.deform_conv2d_backward(
        _kernel_input(grad_out),
        _kernel_input(x),
        geom.contiguous(),
        affine,
        weight.contiguous(),
        groups,
    )

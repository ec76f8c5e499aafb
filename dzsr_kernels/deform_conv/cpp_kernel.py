"""``cpp`` backend of the packed deformable convolution: C++ CPU and CUDA kernels in
``csrc/deform_conv/`` (registered as ``torch.ops.dzsr_C.deform_conv2d_{forward,backward}``)."""

from __future__ import annotations

import torch


def forward(x, geom, affine, weight, bias, groups):
    """out (N, C_out, H, W) in x's dtype; inputs as in ``reference.deform_conv2d`` (x, geom and
    weight are made contiguous for the C++ op)."""
    return torch.ops.dzsr_C.deform_conv2d_forward(
        x.contiguous(), geom.contiguous(), affine, weight.contiguous(), bias, groups
    )


def backward(grad_out, x, geom, affine, weight, groups):
    """(dx, dgeom, dweight), each in its input's dtype and shape; the tensors are made contiguous
    for the C++ op."""
    dx, dgeom, dweight = torch.ops.dzsr_C.deform_conv2d_backward(
        grad_out.contiguous(),
        x.contiguous(),
        geom.contiguous(),
        affine,
        weight.contiguous(),
        groups,
    )
    return dx, dgeom, dweight

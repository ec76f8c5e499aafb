"""Random deformable-conv cases and the backend-vs-reference comparison shared by the Triton and CUDA
test files: the backend runs through the public ops (custom op + autograd), the reference in
float64 on the same inputs, and the forward output and every gradient are compared."""
from __future__ import annotations

import torch

import dzsr_kernels as dk

# Tolerance on |ours - reference| relative to max(1, max|reference|), per input dtype. Half types
# round the inputs, the output and the gradients to 11 (float16) or 8 (bfloat16) mantissa bits
# and are computed in float32, so their error is a few units of their last place.
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}

SHAPES = [  # n, c, c_out, h, w, k, groups
    (2, 5, 5, 6, 7, 3, 5),  # depthwise
    (2, 3, 6, 5, 6, 3, 3),  # depthwise, channel multiplier 2
    (2, 4, 3, 5, 7, 3, 1),  # dense
    (1, 6, 4, 6, 5, 3, 2),  # grouped
    (2, 3, 4, 5, 5, 1, 1),  # k = 1
    (1, 4, 4, 9, 8, 5, 4),  # k = 5, depthwise
    (1, 2, 2, 1, 1, 3, 2),  # one pixel
]


def make_case(n, c, c_out, h, w, k, groups, affine, dtype=torch.float64, device="cpu", spread=1.0, bias=True):
    """(x, geom, weight, bias): geom is (A, b) for affine else the (N, 2k², H, W) offsets; positions
    reach well outside the image so the zero-padding corners are exercised."""
    x = torch.randn(n, c, h, w, dtype=torch.float64, device=device)
    if affine:
        eye = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64, device=device).view(1, 4, 1, 1)
        geom = (eye + spread * torch.randn(n, 4, h, w, dtype=torch.float64, device=device),
                2 * spread * torch.randn(n, 2, h, w, dtype=torch.float64, device=device))
    else:
        geom = (2 * spread * torch.randn(n, 2 * k * k, h, w, dtype=torch.float64, device=device),)
    weight = torch.randn(c_out, c // groups, k, k, dtype=torch.float64, device=device)
    b = torch.randn(c_out, dtype=torch.float64, device=device) if bias else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(x), tuple(map(cast, geom)), cast(weight), cast(b)


def run(backend, x, geom, weight, bias, groups, grad_out=None):
    """Output and gradients (x, *geom, weight, bias) of the public op on ``backend``."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, *geom, weight)]
    bias_leaf = None if bias is None else bias.detach().clone().requires_grad_()
    with dk.use_backend(backend):
        if len(geom) == 2:
            out = dk.affine_deform_conv2d(leaves[0], leaves[1], leaves[2], leaves[3], bias_leaf, groups=groups)
        else:
            out = dk.deform_conv2d(leaves[0], leaves[1], leaves[2], bias_leaf, groups=groups)
    if grad_out is None:
        grad_out = torch.randn(out.shape, dtype=torch.float64, device=out.device).to(out.dtype)
    inputs = leaves + ([bias_leaf] if bias_leaf is not None else [])
    grads = torch.autograd.grad(out, inputs, grad_out)
    return out, grads, grad_out


def check_against_reference(backend, x, geom, weight, bias, groups, tol=None):
    """The backend's output and gradients equal the float64 reference's on the same inputs."""
    out, grads, grad_out = run(backend, x, geom, weight, bias, groups)
    up = lambda t: None if t is None else t.detach().double()  # noqa: E731
    ref_out, ref_grads, _ = run("reference", up(x), tuple(map(up, geom)), up(weight), up(bias), groups,
                                grad_out.double())
    tol = TOL[x.dtype] if tol is None else tol
    names = ["out", "x", *(["A", "b"] if len(geom) == 2 else ["offset"]), "weight", "bias"]
    assert out.dtype == x.dtype and out.device == x.device
    for name, ours, ref in zip(names, (out, *grads), (ref_out, *ref_grads)):
        assert ours.shape == ref.shape and ours.dtype == x.dtype, name
        scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
        torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")

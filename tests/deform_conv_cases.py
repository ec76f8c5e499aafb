"""Random deformable-conv cases and the backend-vs-reference comparisons shared by the test files:
``check_against_reference`` runs the public ops (custom op + autograd) against the float64
reference; ``check_packed_against_reference`` runs the packed op on any backend, the CUDA emulation
included, against the reference in the same dtype, comparing NaN masks, ±Inf and finite values."""

from __future__ import annotations

from pathlib import Path

import torch
from cuda_emulation_build import emulated_library

import dzsr_kernels as dk
from dzsr_kernels import _backend
from dzsr_kernels.deform_conv import reference

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


# Bilinear sampling's derivative jumps where a position crosses an integer (the corners change). A
# backend computing positions in float32 and the float64 reference fall on different sides of such a
# jump when a position lies within rounding of an integer (seen: y = 1.99999993 in float64, 2.0 in
# float32, a gradient 19 apart), so make_case keeps every sampling position at least this far from
# integers, measured on the values the op receives. Tests of exact integer positions build their own.
POSITION_MARGIN = 1e-3


def near_integer_pixels(geom, k, affine):
    """(N, H, W) bool: pixels with a sampling position within POSITION_MARGIN of an integer, for
    geom = (A, b) (affine) or (offsets,) in any dtype (positions computed in float64)."""
    py, px = reference.sample_positions(torch.cat(geom, 1).double(), k, affine)
    near = lambda p: (p - p.round()).abs() < POSITION_MARGIN  # noqa: E731
    return (near(py) | near(px)).any(1)


def make_case(
    n, c, c_out, h, w, k, groups, affine, dtype=torch.float64, device="cpu", spread=1.0, bias=True
):
    """(x, geom, weight, bias): geom is (A, b) for affine else the (N, 2k², H, W) offsets; positions
    reach well outside the image so the zero-padding corners are exercised, and keep
    POSITION_MARGIN from integers in ``dtype`` (pixels too close are redrawn)."""
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    x = torch.randn(n, c, h, w, dtype=torch.float64, device=device)

    def draw_geom():
        if affine:
            eye = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64, device=device)
            return (
                eye.view(1, 4, 1, 1)
                + spread * torch.randn(n, 4, h, w, dtype=torch.float64, device=device),
                2 * spread * torch.randn(n, 2, h, w, dtype=torch.float64, device=device),
            )
        return (2 * spread * torch.randn(n, 2 * k * k, h, w, dtype=torch.float64, device=device),)

    geom = tuple(map(cast, draw_geom()))
    for _ in range(1000):
        near = near_integer_pixels(geom, k, affine)
        if not near.any():
            break
        fresh = tuple(map(cast, draw_geom()))
        geom = tuple(torch.where(near[:, None], f, g) for f, g in zip(fresh, geom))
    else:
        raise AssertionError(f"no geometry {POSITION_MARGIN} away from integers for {dtype}")
    weight = torch.randn(c_out, c // groups, k, k, dtype=torch.float64, device=device)
    b = torch.randn(c_out, dtype=torch.float64, device=device) if bias else None
    return cast(x), geom, cast(weight), cast(b)


def run(backend, x, geom, weight, bias, groups, grad_out=None):
    """Output and gradients (x, *geom, weight, bias) of the public op on ``backend``."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, *geom, weight)]
    bias_leaf = None if bias is None else bias.detach().clone().requires_grad_()
    with dk.use_backend(backend):
        if len(geom) == 2:
            out = dk.affine_deform_conv2d(
                leaves[0], leaves[1], leaves[2], leaves[3], bias_leaf, groups=groups
            )
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
    ref_out, ref_grads, _ = run(
        "reference", up(x), tuple(map(up, geom)), up(weight), up(bias), groups, grad_out.double()
    )
    tol = TOL[x.dtype] if tol is None else tol
    names = ["out", "x", *(["A", "b"] if len(geom) == 2 else ["offset"]), "weight", "bias"]
    assert out.dtype == x.dtype and out.device == x.device
    for name, ours, ref in zip(names, (out, *grads), (ref_out, *ref_grads)):
        assert ours.shape == ref.shape and ours.dtype == x.dtype, name
        scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
        torch.testing.assert_close(
            ours.double(), ref, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}"
        )


# ---- Packed-op harness shared by the NaN/Inf, empty-input, layout and fuzz tests ----------------

ROOT = Path(__file__).resolve().parent.parent
EMULATED = "cuda-emulated"  # the CUDA kernels run on CPU threads (tests/cuda_emulation/)


def emulated_ops():
    """torch.ops.dzsr_cuda_emu: the CUDA kernels and host code of deform_conv_cuda.cu built for CPU
    threads (tests/cuda_emulation/cuda_emulation.h)."""
    return emulated_library("dzsr_cuda_emu", "deform_conv_emulated.cpp")


def packed_results(backend, x, geom, affine, weight, bias, groups, grad_out=None):
    """(out, dx, dgeom, dweight) of the packed op on ``backend`` (reference, cpp, triton, or
    EMULATED), inputs used as given (any layout); grad_out defaults to a finite random tensor."""
    if backend == EMULATED:
        ops = emulated_ops()
        c = lambda t: None if t is None else t.contiguous()  # noqa: E731
        out = ops.deform_conv2d_forward(c(x), c(geom), affine, c(weight), c(bias), groups)
        if grad_out is None:
            grad_out = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
        grads = ops.deform_conv2d_backward(
            grad_out.contiguous(), c(x), c(geom), affine, c(weight), groups
        )
        return (out, *grads), grad_out
    leaves = [
        t.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        for t in (x, geom, weight)
    ]
    if backend == "reference":
        out = reference.deform_conv2d(leaves[0], leaves[1], affine, leaves[2], bias, groups)
    else:
        reason = _backend.unavailable_reason(
            backend, x.device.type, "deform_conv2d"
        )  # loads the extension
        assert reason is None, reason
        out = torch.ops.dzsr.deform_conv2d_packed(
            leaves[0], leaves[1], affine, leaves[2], bias, groups, backend
        )
    if grad_out is None:
        grad_out = torch.randn(out.shape, dtype=torch.float64, device=out.device).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    grads = [
        torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)
    ]  # empty outputs
    return (out.detach(), *grads), grad_out


def assert_same_values(name, ours, ref, tol):
    """Equal shape and dtype, equal NaN masks, equal ±Inf positions, finite values close (relative
    to max(1, max |finite reference|))."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (
        name,
        ours.shape,
        ref.shape,
        ours.dtype,
        ref.dtype,
    )
    nan_o, nan_r = torch.isnan(ours), torch.isnan(ref)
    assert torch.equal(nan_o, nan_r), (
        f"{name}: NaN masks differ, ours {int(nan_o.sum())} NaNs, reference {int(nan_r.sum())}, "
        f"first difference at {(nan_o != nan_r).nonzero()[:3].tolist()}"
    )
    o, r = ours[~nan_o].double(), ref[~nan_r].double()
    for v in (float("inf"), -float("inf")):
        assert torch.equal(o == v, r == v), f"{name}: {v} positions differ"
    finite = torch.isfinite(r)
    scale = max(1.0, r[finite].abs().max().item()) if finite.any() else 1.0
    torch.testing.assert_close(
        o[finite], r[finite], rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}"
    )


def check_packed_against_reference(backend, x, geom, affine, weight, bias, groups, tol=None):
    """Every output and gradient of ``backend`` equals the reference's computed on the same inputs
    in the same dtype (so both overflow alike): NaN masks, ±Inf positions, finite values."""
    ours, grad_out = packed_results(backend, x, geom, affine, weight, bias, groups)
    ref, _ = packed_results("reference", x, geom, affine, weight, bias, groups, grad_out)
    tol = TOL[x.dtype] if tol is None else tol
    for name, a, b in zip(("out", "dx", "dgeom", "dweight"), ours, ref):
        assert_same_values(name, a, b, tol)
    return ours, ref


def layout(t, kind):
    """The same values as ``t`` in another memory layout: contiguous, channels_last, torchvision
    (the permutations of torchvision's non-contiguous deform-conv test cases), or sliced (a view
    into a bigger tensor, every stride non-standard)."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "torchvision":
        return t.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    if kind == "sliced":
        n, c, h, w = t.shape
        big = torch.zeros(n, 2 * c + 1, h + 1, w + 2, dtype=t.dtype, device=t.device)
        view = big[:, 1::2, 1:, 2:]
        view.copy_(t)
        return view
    raise ValueError(kind)


LAYOUTS = ["contiguous", "channels_last", "torchvision", "sliced"]

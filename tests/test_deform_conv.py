"""Deformable convolution: reference vs torchvision (external oracle), every fast CPU backend vs the
reference (forward and all gradients), gradcheck, opcheck, the P=0 path, borders, bad inputs."""

import os
import subprocess
import sys

import deform_conv_cases as cases
import pytest
import torch
import torchvision

import dzsr_kernels as dk
from dzsr_kernels.deform_conv import reference
from dzsr_kernels.deform_conv.op import _packed, memory_format_of

CPU_FAST = [b for b in ("cpp",) if b in dk.available_backends("cpu", "deform_conv2d")]
TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def test_cpp_backend_builds_here():
    """CI has a compiler: the C++ backend must be available, or every cpp test below would vanish."""
    assert "cpp" in dk.available_backends("cpu", "deform_conv2d")


def affine_to_offset(A, b, k):
    """torchvision offsets (dy, dx) = A g + b - g per tap, as the authors build them."""
    g = reference.tap_grid(k, A.device, A.dtype)
    gy, gx = g[:, 0].view(1, -1, 1, 1), g[:, 1].view(1, -1, 1, 1)
    dy = A[:, 0:1] * gy + A[:, 1:2] * gx + b[:, 0:1] - gy
    dx = A[:, 2:3] * gy + A[:, 3:4] * gx + b[:, 1:2] - gx
    return torch.stack([dy, dx], 2).flatten(1, 2)


def make_case(n, c, c_out, h, w, k, groups, dtype=torch.float64, spread=1.5, bias=True):
    """(x, A, b, weight, bias): deform_conv_cases.make_case's affine case (positions kept off
    integers, where the bilinear derivative jumps)."""
    x, (A, b), wgt, bs = cases.make_case(
        n, c, c_out, h, w, k, groups, affine=True, dtype=dtype, spread=spread, bias=bias
    )
    return x, A, b, wgt, bs


SHAPES = [  # n, c, c_out, h, w, k, groups
    (2, 6, 6, 7, 9, 3, 6),  # depthwise
    (2, 20, 20, 5, 7, 3, 20),  # depthwise, three channel slices (8, 8, 4) under a 1-byte budget
    (3, 4, 8, 5, 11, 3, 4),  # depthwise with channel multiplier 2
    (2, 4, 6, 8, 7, 3, 1),  # dense
    (
        2,
        20,
        7,
        5,
        6,
        3,
        1,
    ),  # dense, forward in three channel slices (8, 8, 4) under a 1-byte budget
    (1, 6, 9, 6, 6, 3, 3),  # grouped
    (2, 3, 5, 9, 4, 1, 1),  # k = 1
    (1, 4, 4, 10, 8, 5, 2),  # k = 5
    (1, 2, 2, 1, 1, 3, 2),  # one pixel
]


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_torchvision(shape):
    x, A, b, wgt, bs = make_case(*shape)
    offset = affine_to_offset(A, b, shape[5])
    leaves = [t.requires_grad_() for t in (x, A, b, wgt, bs)]
    with dk.use_backend("reference"):
        ours = dk.affine_deform_conv2d(x, A, b, wgt, bs, groups=shape[6])
    tv_leaves = [t.detach().clone().requires_grad_() for t in (x, offset, wgt, bs)]
    theirs = torchvision.ops.deform_conv2d(
        tv_leaves[0], tv_leaves[1], tv_leaves[2], tv_leaves[3], padding=shape[5] // 2
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(ours)
    ours_g = torch.autograd.grad(ours, [leaves[0], leaves[3], leaves[4]], go)
    theirs_g = torch.autograd.grad(theirs, [tv_leaves[0], tv_leaves[2], tv_leaves[3]], go)
    for a, t in zip(ours_g, theirs_g):
        torch.testing.assert_close(a, t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_general_reference_matches_torchvision_offset_grad(shape):
    x, A, b, wgt, bs = make_case(*shape)
    offset = affine_to_offset(A, b, shape[5]).requires_grad_()
    with dk.use_backend("reference"):
        ours = dk.deform_conv2d(x, offset, wgt, bs, groups=shape[6])
    off2 = offset.detach().clone().requires_grad_()
    theirs = torchvision.ops.deform_conv2d(x, off2, wgt, bs, padding=shape[5] // 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(ours)
    torch.testing.assert_close(
        torch.autograd.grad(ours, offset, go)[0],
        torch.autograd.grad(theirs, off2, go)[0],
        rtol=1e-8,
        atol=1e-8,
    )


def run_both(backend, affine, x, A, b, wgt, bs, groups):
    """Forward and every gradient on `backend` and on the reference, same inputs and upstream grad."""
    results = []
    go = None
    for name in (backend, "reference"):
        leaves = [
            t.detach().clone().requires_grad_() if t is not None else None
            for t in (x, A, b, wgt, bs)
        ]
        with dk.use_backend(name):
            if affine:
                out = dk.affine_deform_conv2d(
                    leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], groups=groups
                )
            else:
                offset = affine_to_offset(leaves[1], leaves[2], wgt.shape[2])
                out = dk.deform_conv2d(leaves[0], offset, leaves[3], leaves[4], groups=groups)
        go = torch.randn_like(out) if go is None else go
        grads = torch.autograd.grad(out, [t for t in leaves if t is not None], go)
        results.append((out, grads))
    return results


@pytest.mark.parametrize("backend", CPU_FAST)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "cl_budget,layout",
    [(None, "contiguous"), ("0", "contiguous"), ("1", "contiguous"), (None, "channels_last")],
    ids=["default", "planar", "8-channel-slices", "channels-last-x"],
)
def test_fast_matches_reference(backend, shape, affine, dtype, cl_budget, layout, monkeypatch):
    """cl_budget selects the CPU path of depthwise convolutions and of the one-group forward for
    contiguous x: default (channels-last copies), planar kernels, or channels-last copies made 8
    channels at a time (the path of large images); a channels-last x of a depthwise convolution is
    read in place and gives a channels-last output."""
    if cl_budget is not None:
        monkeypatch.setenv("DZSR_DEFORM_CHANNELS_LAST_MAX_BYTES", cl_budget)
    x, *rest = make_case(*shape, dtype=dtype)
    x = x.contiguous(memory_format=getattr(torch, layout + "_format", torch.channels_last))
    (out, grads), (ref, ref_grads) = run_both(backend, affine, x, *rest, groups=shape[6])
    assert out.is_contiguous(memory_format=memory_format_of(x))  # the op's layout rule
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    for name, g, r in zip(["x", "A", "b", "weight", "bias"], grads, ref_grads):
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(
            g, r, rtol=tol, atol=tol * scale, msg=lambda m: f"grad {name}: {m}"
        )


@pytest.mark.parametrize("backend", CPU_FAST)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fast_half_precision(backend, dtype):
    """Half inputs are computed in float32 and rounded once: compare with the float32 reference."""
    half = make_case(2, 8, 8, 9, 7, 3, 8, dtype=dtype)
    with dk.use_backend(backend):
        out = dk.affine_deform_conv2d(*half, groups=8)
    with dk.use_backend("reference"):
        ref = dk.affine_deform_conv2d(*[t.float() for t in half], groups=8)
    assert out.dtype == dtype
    torch.testing.assert_close(
        out.float(), ref, rtol=TOL[dtype], atol=TOL[dtype] * ref.abs().max().item()
    )


@pytest.mark.parametrize("backend", CPU_FAST)
def test_non_contiguous_inputs(backend):
    x, A, b, wgt, bs = make_case(2, 6, 6, 9, 8, 3, 6, dtype=torch.float32)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, channels-permuted strides
    At = torch.stack([A, A], -1)[..., 0]  # strided view with the same values
    bt = b.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not (xt.is_contiguous() and At.is_contiguous())
    with dk.use_backend(backend):
        out = dk.affine_deform_conv2d(xt, At, bt, wgt, bs, groups=6)
    with dk.use_backend("reference"):
        ref = dk.affine_deform_conv2d(x, A, b, wgt, bs, groups=6)
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("backend", CPU_FAST)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("groups,c_out", [(3, 3), (1, 2)])
def test_gradcheck(backend, affine, groups, c_out):
    x, A, b, wgt, bs = make_case(1, 3, c_out, 4, 5, 3, groups, spread=0.7)
    inputs = [t.requires_grad_() for t in (x, A, b, wgt, bs)]

    def fn(x, A, b, wgt, bs):
        with dk.use_backend(backend):
            if affine:
                return dk.affine_deform_conv2d(x, A, b, wgt, bs, groups=groups)
            return dk.deform_conv2d(x, affine_to_offset(A, b, 3), wgt, bs, groups=groups)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_FAST)
@pytest.mark.parametrize("affine", [True, False])
def test_opcheck(backend, affine):
    x, A, b, wgt, bs = make_case(2, 4, 4, 5, 6, 3, 4, dtype=torch.float32)
    geom = torch.cat([A, b], 1) if affine else affine_to_offset(A, b, 3)
    args = (x.requires_grad_(), geom.requires_grad_(), affine, wgt.requires_grad_(), bs, 4, backend)
    torch.library.opcheck(_packed, args)


@pytest.mark.parametrize("backend", ["reference"] + CPU_FAST)
def test_p0_equals_centre_tap_conv(backend):
    """P = 0 (A = 0, b = 0): every tap reads the centre pixel; the layer's A=b=None path is the 1x1 conv."""
    layer = dk.AffineDeformConv2d(6, 6, 3, groups=6).double()
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    zeros_a = torch.zeros(2, 4, 7, 5, dtype=torch.float64)
    zeros_b = torch.zeros(2, 2, 7, 5, dtype=torch.float64)
    with dk.use_backend(backend):
        deform = layer(x, zeros_a, zeros_b)
    fast = layer(x)
    torch.testing.assert_close(fast, deform, rtol=1e-12, atol=1e-12)
    gd = torch.autograd.grad(deform.square().sum(), [x, layer.weight])
    gf = torch.autograd.grad(fast.square().sum(), [x, layer.weight])
    for a, c in zip(gd, gf):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_p0_layer_runs_conv2d_not_deform(monkeypatch):
    """The P=0 path must not touch the deformable kernels at all."""
    import dzsr_kernels.deform_conv.op as op

    monkeypatch.setattr(
        op, "_dispatch", lambda *a, **k: pytest.fail("P=0 ran the deformable kernel")
    )
    layer = dk.AffineDeformConv2d(4, 4, 3, groups=4)
    assert layer(torch.randn(1, 4, 6, 6)).shape == (1, 4, 6, 6)


@pytest.mark.parametrize("backend", ["reference"] + CPU_FAST)
def test_far_outside_reads_zero(backend):
    x, A, b, wgt, bs = make_case(1, 4, 4, 6, 7, 3, 4, dtype=torch.float32)
    for shift in (1e4, -1e4, 7.0, -7.0 - 1e-6):  # every tap of every pixel lands outside
        with dk.use_backend(backend):
            out = dk.affine_deform_conv2d(
                x, torch.zeros_like(A), torch.full_like(b, shift), wgt, bs, groups=4
            )
        torch.testing.assert_close(out, bs.view(1, -1, 1, 1).expand_as(out))


@pytest.mark.parametrize("backend", ["reference"] + CPU_FAST)
def test_exact_border_positions_match_torchvision(backend):
    """Sampling points exactly on integer coordinates at and beyond the border: -1, 0, H-1, H."""
    n, c, h, w = 1, 3, 5, 6
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    wgt = torch.randn(c, 1, 3, 3, dtype=torch.float64)
    A = torch.zeros(n, 4, h, w, dtype=torch.float64)
    for by, bx in [(-1.0, 0.0), (0.0, -6.0), (4.0, 5.0), (5.0, 0.0), (-5.0, -6.0), (0.5, -0.5)]:
        b = torch.empty(n, 2, h, w, dtype=torch.float64)
        b[:, 0] = by - torch.arange(h, dtype=torch.float64).view(h, 1)  # absolute position y = by
        b[:, 1] = bx - torch.arange(w, dtype=torch.float64).view(1, w)
        with dk.use_backend(backend):
            out = dk.affine_deform_conv2d(x, A, b, wgt, groups=c)
        tv = torchvision.ops.deform_conv2d(x, affine_to_offset(A, b, 3), wgt, padding=1)
        torch.testing.assert_close(out, tv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_FAST)
def test_identity_geometry_is_plain_convolution(backend):
    """A = I, b = 0 samples the regular grid: the op equals F.conv2d with zero padding."""
    x, _, _, wgt, bs = make_case(2, 4, 6, 9, 8, 3, 2, dtype=torch.float64)
    A = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64).view(1, 4, 1, 1).expand(2, 4, 9, 8)
    b = torch.zeros(2, 2, 9, 8, dtype=torch.float64)
    with dk.use_backend(backend):
        out = dk.affine_deform_conv2d(x, A, b, wgt, bs, groups=2)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, wgt, bs, padding=1, groups=2))


def test_compile_fullgraph():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = dk.AffineDeformConv2d(4, 4, 3, groups=4)

        def forward(self, x, A, b):
            return self.conv(x, A, b) + self.conv(x)

    block = Block()
    x, A, b, _, _ = make_case(1, 4, 4, 6, 6, 3, 4, dtype=torch.float32)
    eager = block(x, A, b)
    compiled = torch.compile(block, fullgraph=True)(x, A, b)
    torch.testing.assert_close(compiled, eager)


BAD_INPUTS = {  # id -> (needle in the message, make(x, A, b, w, bias) -> call arguments, exception)
    "x-3d": ("x", lambda x, A, b, w, bs: (x[0], A, b, w, bs, 1), ValueError),
    "x-5d": ("x", lambda x, A, b, w, bs: (x[None], A, b, w, bs, 1), ValueError),
    "x-not-tensor": ("x", lambda x, A, b, w, bs: (x.tolist(), A, b, w, bs, 1), TypeError),
    "x-int": ("x", lambda x, A, b, w, bs: (x.long(), A, b, w, bs, 1), TypeError),
    "x-bool": ("x", lambda x, A, b, w, bs: (x > 0, A, b, w, bs, 1), TypeError),
    "x-complex": ("x", lambda x, A, b, w, bs: (x.to(torch.complex64), A, b, w, bs, 1), TypeError),
    "A-channels": ("A", lambda x, A, b, w, bs: (x, A[:, :3], b, w, bs, 1), ValueError),
    "A-batch": ("A", lambda x, A, b, w, bs: (x, A[:1], b, w, bs, 1), ValueError),
    "A-height": ("A", lambda x, A, b, w, bs: (x, A[:, :, 1:], b, w, bs, 1), ValueError),
    "A-none": ("A", lambda x, A, b, w, bs: (x, None, b, w, bs, 1), TypeError),
    "A-int": ("A", lambda x, A, b, w, bs: (x, A.int(), b, w, bs, 1), TypeError),
    "b-width": ("b", lambda x, A, b, w, bs: (x, A, b[..., :-1], w, bs, 1), ValueError),
    "b-channels": ("b", lambda x, A, b, w, bs: (x, A, A, w, bs, 1), ValueError),
    "b-3d": ("b", lambda x, A, b, w, bs: (x, A, b[0], w, bs, 1), ValueError),
    "weight-not-tensor": ("weight", lambda x, A, b, w, bs: (x, A, b, 3, bs, 1), TypeError),
    "weight-even-k": (
        "odd",
        lambda x, A, b, w, bs: (x, A, b, torch.randn(4, 4, 2, 2), bs, 1),
        ValueError,
    ),
    "weight-non-square": (
        "weight",
        lambda x, A, b, w, bs: (x, A, b, torch.randn(4, 4, 3, 5), bs, 1),
        ValueError,
    ),
    "weight-3d": ("weight", lambda x, A, b, w, bs: (x, A, b, w[0], bs, 1), ValueError),
    "weight-c-in": ("weight", lambda x, A, b, w, bs: (x, A, b, w[:, :3], bs, 1), ValueError),
    "weight-int": ("weight", lambda x, A, b, w, bs: (x, A, b, w.long(), bs, 1), TypeError),
    "bias-size": ("bias", lambda x, A, b, w, bs: (x, A, b, w, bs[:3], 1), ValueError),
    "bias-2d": ("bias", lambda x, A, b, w, bs: (x, A, b, w, bs[None], 1), ValueError),
    "bias-not-tensor": ("bias", lambda x, A, b, w, bs: (x, A, b, w, [0.0] * 4, 1), TypeError),
    "dtype-x": ("dtype", lambda x, A, b, w, bs: (x.double(), A, b, w, bs, 1), TypeError),
    "dtype-bias": (
        "bias torch.float64",
        lambda x, A, b, w, bs: (x, A, b, w, bs.double(), 1),
        TypeError,
    ),
    "dtype-half-A": (
        "A torch.float16",
        lambda x, A, b, w, bs: (x, A.half(), b, w, bs, 1),
        TypeError,
    ),
    "device-A": ("A on meta", lambda x, A, b, w, bs: (x, A.to("meta"), b, w, bs, 1), ValueError),
    "device-bias": (
        "bias on meta",
        lambda x, A, b, w, bs: (x, A, b, w, bs.to("meta"), 1),
        ValueError,
    ),
    "groups-zero": ("groups", lambda x, A, b, w, bs: (x, A, b, w, bs, 0), ValueError),
    "groups-negative": ("groups", lambda x, A, b, w, bs: (x, A, b, w, bs, -2), ValueError),
    "groups-float": ("groups", lambda x, A, b, w, bs: (x, A, b, w, bs, 2.0), TypeError),
    "groups-bool": ("groups", lambda x, A, b, w, bs: (x, A, b, w, bs, True), TypeError),
    "groups-str": ("groups", lambda x, A, b, w, bs: (x, A, b, w, bs, "4"), TypeError),
    "groups-not-dividing-C": (
        "groups",
        lambda x, A, b, w, bs: (x, A, b, torch.randn(3, 1, 3, 3), None, 3),
        ValueError,
    ),
    "groups-not-dividing-C_out": (
        "groups",
        lambda x, A, b, w, bs: (x, A, b, torch.randn(3, 2, 3, 3), None, 2),
        ValueError,
    ),
}


@pytest.mark.parametrize("needle,make,exc", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(needle, make, exc):
    """Each bad argument gives one clear error naming it (35 cases)."""
    x, A, b = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5), torch.randn(2, 2, 5, 5)
    w, bs = torch.randn(4, 4, 3, 3), torch.randn(4)
    *tensors, groups = make(x, A, b, w, bs)
    with pytest.raises(exc, match=needle):
        dk.affine_deform_conv2d(*tensors, groups=groups)


GENERAL_BAD_INPUTS = {
    "offset-channels": ("offset", lambda x, o, w: (x, o[:, :9], w), ValueError),
    "offset-not-tensor": ("offset", lambda x, o, w: (x, None, w), TypeError),
    "offset-height": ("offset", lambda x, o, w: (x, o[:, :, :4], w), ValueError),
    "offset-dtype": ("offset torch.float64", lambda x, o, w: (x, o.double(), w), TypeError),
    "offset-int": ("offset", lambda x, o, w: (x, o.long(), w), TypeError),
}


@pytest.mark.parametrize(
    "needle,make,exc", list(GENERAL_BAD_INPUTS.values()), ids=list(GENERAL_BAD_INPUTS)
)
def test_general_offset_bad_inputs(needle, make, exc):
    x, o, w = torch.randn(1, 2, 5, 5), torch.randn(1, 18, 5, 5), torch.randn(2, 1, 3, 3)
    with pytest.raises(exc, match=needle):
        dk.deform_conv2d(*make(x, o, w), groups=2)


def test_layer_bad_inputs():
    with pytest.raises(ValueError, match="kernel_size"):
        dk.AffineDeformConv2d(4, 4, 2)
    with pytest.raises(ValueError, match="groups"):
        dk.AffineDeformConv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="both A and b"):
        dk.AffineDeformConv2d(4, 4, 3)(torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5))


def test_backend_selection_errors():
    with pytest.raises(ValueError, match="backend"):
        with dk.use_backend("cuda-magic"):
            pass
    with pytest.raises(dk.BackendUnavailableError, match="cpp"):
        with dk.use_backend("cpp"):
            dk.affine_deform_conv2d(
                *(
                    t.to("meta")
                    for t in (
                        torch.randn(1, 2, 4, 4),
                        torch.randn(1, 4, 4, 4),
                        torch.randn(1, 2, 4, 4),
                        torch.randn(2, 1, 3, 3),
                    )
                ),
                groups=2,
            )


def _run_python(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )


def test_works_without_extension(tmp_path):
    """No prebuilt library and no JIT: the package imports, 'auto' falls back to the reference, and
    asking for cpp says why it is unavailable."""
    code = (
        "import torch, dzsr_kernels as dk\n"
        "print(dk.available_backends('cpu', 'deform_conv2d'))\n"
        "x=torch.randn(1,2,5,5); A=torch.randn(1,4,5,5); b=torch.randn(1,2,5,5); w=torch.randn(2,1,3,3)\n"
        "print(dk.affine_deform_conv2d(x,A,b,w,groups=2).shape)\n"
        "try:\n    with dk.use_backend('cpp'): dk.affine_deform_conv2d(x,A,b,w,groups=2)\n"
        "except dk.BackendUnavailableError as e: print('ERR', e)\n"
    )
    out = _run_python(code, DZSR_NO_JIT="1", DZSR_CACHE_DIR=str(tmp_path), TRITON_INTERPRET="0")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "['reference']"
    assert lines[1] == "torch.Size([1, 2, 5, 5])"
    assert lines[2].startswith("ERR") and "DZSR_NO_JIT" in lines[2]


def test_failed_build_names_the_compiler_log(tmp_path):
    code = (
        "import dzsr_kernels as dk\n"
        "try:\n    with dk.use_backend('cpp'): dk.affine_deform_conv2d(*[__import__('torch').randn(1,1,3,3)]*1,"
        " __import__('torch').randn(1,4,3,3), __import__('torch').randn(1,2,3,3), __import__('torch').randn(1,1,3,3))\n"
        "except dk.BackendUnavailableError as e: print('ERR', e)\n"
    )
    out = _run_python(code, DZSR_CACHE_DIR=str(tmp_path), CXX="/bin/false", MAX_JOBS="1")
    assert out.returncode == 0, out.stderr
    assert "compiler log:" in out.stdout
    log = out.stdout.split("compiler log:")[1].strip().split()[0]
    assert os.path.exists(log)

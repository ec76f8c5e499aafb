"""Deformable convolution, issue 12: the NaN/Inf rule of reference.py (asserted directly on the
reference, then every backend vs the reference: NaN masks, ±Inf, finite values, forward and every
gradient), empty inputs on every backend, and the fakes / output layout rule (sizes, strides and
dtypes of fake == kernel; opcheck and torch.compile(fullgraph=True) forward+backward) on
contiguous, non-contiguous (torchvision's test permutations, batch 33), channels-last and sliced
inputs. Backends: reference, cpp (CPU; planar and channels-last depthwise paths), the CUDA kernels
under the CPU emulation, and triton under the interpreter (when TRITON_INTERPRET=1)."""

import os

import pytest
import torch
from deform_conv_cases import (
    EMULATED,
    LAYOUTS,
    check_packed_against_reference,
    emulated_ops,
    layout,
    packed_results,
)
from torch._subclasses.fake_tensor import FakeTensorMode

import dzsr_kernels as dk
from dzsr_kernels.deform_conv import reference
from dzsr_kernels.deform_conv.op import _packed, _packed_backward, memory_format_of

NAN, INF = float("nan"), float("inf")
CPU = [b for b in ("cpp", "triton") if b in dk.available_backends("cpu", "deform_conv2d")]
BACKENDS = CPU + ["cpp-planar", EMULATED]


@pytest.fixture(scope="module", autouse=True)
def _emulation():
    emulated_ops()


@pytest.fixture
def backend_env(monkeypatch):
    """Maps 'cpp-planar' to cpp with the channels-last depthwise path switched off."""

    def resolve(name):
        if name == "cpp-planar":
            monkeypatch.setenv("DZSR_DEFORM_CHANNELS_LAST_MAX_BYTES", "0")
            return "cpp"
        return name

    return resolve


def test_backends_present():
    """Guards the parametrisations: cpp always, triton under the interpreter."""
    assert "cpp" in CPU
    assert ("triton" in CPU) == (os.environ.get("TRITON_INTERPRET") == "1")


def general_case(n=2, c=4, c_out=4, h=5, w=6, k=3, groups=4, dtype=torch.float64):
    x = torch.randn(n, c, h, w, dtype=dtype)
    offset = 1.5 * torch.randn(n, 2 * k * k, h, w, dtype=dtype)
    return (
        x,
        offset,
        torch.randn(c_out, c // groups, k, k, dtype=dtype),
        torch.randn(c_out, dtype=dtype),
    )


def affine_case(n=2, c=4, c_out=4, h=5, w=6, k=3, groups=4, dtype=torch.float64):
    x = torch.randn(n, c, h, w, dtype=dtype)
    geom = torch.randn(n, 6, h, w, dtype=dtype)
    geom[:, :4] += torch.tensor([1.0, 0, 0, 1], dtype=dtype).view(1, 4, 1, 1)
    return (
        x,
        geom,
        torch.randn(c_out, c // groups, k, k, dtype=dtype),
        torch.randn(c_out, dtype=dtype),
    )


# ---- The rule, asserted on the reference ------------------------------------------------------


def test_reference_nan_position_is_nan_sample_nan_position_grad_and_no_dx():
    x, geom, weight, bias = affine_case()
    geom[1, 4, 2, 3] = NAN  # by of pixel (2, 3) of sample 1: every tap of that pixel
    (out, dx, dgeom, dweight), _ = packed_results("reference", x, geom, True, weight, bias, 4)
    nan_pixels = torch.zeros(2, 5, 6, dtype=torch.bool)
    nan_pixels[1, 2, 3] = True
    assert torch.equal(out.isnan(), nan_pixels.unsqueeze(1).expand_as(out))  # every channel
    assert torch.equal(dgeom.isnan(), nan_pixels.unsqueeze(1).expand_as(dgeom))  # all of dA, db
    assert dx.isfinite().all()  # scatters nothing
    assert dweight.isnan().all()  # sum over pixels of grad_out * NaN sample


def test_reference_inf_offset_poisons_only_its_tap():
    x, offset, weight, bias = general_case()
    offset[0, 2 * 4 + 1, 1, 1] = INF  # dx offset of tap 4 at pixel (1, 1)
    (out, dx, doff, dweight), _ = packed_results("reference", x, offset, False, weight, bias, 4)
    assert out[0, :, 1, 1].isnan().all() and out.isnan().sum() == 4
    expect = torch.zeros_like(doff, dtype=torch.bool)
    expect[0, 8:10, 1, 1] = True  # d/dpy and d/dpx of that tap only
    assert torch.equal(doff.isnan(), expect)
    assert dx.isfinite().all()
    expect_w = torch.zeros_like(dweight, dtype=torch.bool)
    expect_w[:, :, 1, 1] = True  # tap 4 of every output channel
    assert torch.equal(dweight.isnan(), expect_w)


def test_reference_outside_corners_never_read_border_nan():
    """Every tap far outside: NaN/Inf on the border pixels do not leak (the old clamp-and-multiply
    read them); the output is the bias and every gradient is finite."""
    x, geom, weight, bias = affine_case()
    x[:, :, 0, :] = NAN
    x[:, :, :, -1] = INF
    geom[:, 4] = -50.0
    (out, dx, dgeom, dweight), _ = packed_results("reference", x, geom, True, weight, bias, 4)
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out))
    assert all(t.isfinite().all() for t in (dx, dgeom, dweight))
    assert (dgeom == 0).all() and (dweight == 0).all()


def test_reference_zero_weight_corner_still_read():
    """A position on an integer point has three zero-weight corners; they are read (NaN*0 = NaN)."""
    x, offset, weight, bias = general_case(n=1, c=1, c_out=1, groups=1, k=1)
    offset.zero_()  # k = 1: tap at the pixel itself; corners (y, x), (y, x+1), (y+1, x), (y+1, x+1)
    x[0, 0, 2, 3] = NAN
    (out, dx, doff, dweight), _ = packed_results("reference", x, offset, False, weight, bias, 1)
    expect = torch.zeros(1, 1, 5, 6, dtype=torch.bool)
    expect[0, 0, 1:3, 2:4] = True  # pixels whose cell has (2, 3) as a corner
    assert torch.equal(out.isnan(), expect)
    assert torch.equal(doff.isnan().any(1, keepdim=True), expect)
    assert dx.isfinite().all()  # dx depends on grad_out and weight only


@pytest.mark.parametrize("big", [1e30, -1e30, 3e38])
def test_reference_huge_finite_position_is_outside(big):
    x, offset, weight, bias = general_case(dtype=torch.float32)
    offset.fill_(big)
    (out, dx, doff, dweight), _ = packed_results("reference", x, offset, False, weight, bias, 4)
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out))
    assert (dx == 0).all() and (doff == 0).all() and (dweight == 0).all()


def test_reference_gradcheck_float64():
    """The reference's explicit sampling gradients are the derivatives of its forward."""
    for affine in (True, False):
        x, geom, weight, bias = (affine_case if affine else general_case)(
            n=1, c=2, c_out=2, h=3, w=4, groups=1
        )
        leaves = [t.requires_grad_() for t in (x, geom, weight, bias)]
        assert torch.autograd.gradcheck(
            lambda a, g, wt, bs: reference.deform_conv2d(a, g, affine, wt, bs, 1),
            leaves,
            eps=1e-6,
            atol=1e-6,
        )


# ---- Every backend vs the reference on non-finite inputs --------------------------------------

NONFINITE_CASES = {  # name -> (affine, mutate(x, geom, weight, bias))
    "x-nan": (True, lambda x, g, w, b: x[0, 1, 2, 3].fill_(NAN)),
    "x-inf": (False, lambda x, g, w, b: x[1, 0, 4, 0].fill_(INF)),
    "x-border-nan": (True, lambda x, g, w, b: x[:, :, 0, :].fill_(NAN)),
    "x-border-inf-outside": (
        False,
        lambda x, g, w, b: (x[:, :, :, 0].fill_(-INF), g[:, :, :, :3].fill_(-40.0)),
    ),
    "A-nan": (True, lambda x, g, w, b: g[0, 1, 1, 1].fill_(NAN)),
    "A-inf": (True, lambda x, g, w, b: g[1, 0, 3, 2].fill_(INF)),  # inf * 0 (centre tap) = NaN too
    "b-nan": (True, lambda x, g, w, b: g[1, 4, 0, 5].fill_(NAN)),
    "offset-inf": (False, lambda x, g, w, b: g[0, 3, 2, 2].fill_(-INF)),
    "offset-nan": (False, lambda x, g, w, b: g[1, 10, 4, 5].fill_(NAN)),
    "offset-huge": (False, lambda x, g, w, b: g[:, :, 1:3].fill_(1e300)),
    "position-overflow": (True, lambda x, g, w, b: g[0, :2, 2, 2].fill_(1.7e308)),
    "weight-nan": (False, lambda x, g, w, b: w[1, 0, 0, 2].fill_(NAN)),
    "weight-inf": (True, lambda x, g, w, b: w[2, 0, 1, 1].fill_(INF)),
    "bias-nan": (True, lambda x, g, w, b: b[3].fill_(NAN)),
    "bias-inf": (False, lambda x, g, w, b: b[0].fill_(-INF)),
}
SHAPES = {
    "depthwise": (2, 4, 4, 5, 6, 3, 4),
    "multiplier": (2, 2, 4, 5, 6, 3, 2),
    "dense": (2, 3, 4, 5, 6, 3, 1),
    "dense-16": (2, 16, 16, 5, 6, 3, 1),  # Triton's tensor-core path (tl.dot tiles)
}


# The Triton interpreter is slow: triton runs the channel-multiplier shape (its depthwise forward
# and input-gradient paths and the grouped weight-gradient path meet there) and dense-16 (its
# tensor-core forward, input and weight gradients); the other backends run every shape.
TRITON_SHAPES = ("multiplier", "dense-16")
BACKEND_SHAPES = [(b, s) for b in BACKENDS for s in SHAPES if b != "triton" or s in TRITON_SHAPES]


@pytest.mark.parametrize("backend,shape", BACKEND_SHAPES)
@pytest.mark.parametrize("case", list(NONFINITE_CASES))
def test_nonfinite_matches_reference(backend, shape, case, backend_env):
    n, c, c_out, h, w, k, groups = SHAPES[shape]
    affine, mutate = NONFINITE_CASES[case]
    x, geom, weight, bias = (affine_case if affine else general_case)(n, c, c_out, h, w, k, groups)
    mutate(x, geom, weight, bias)
    ours, ref = check_packed_against_reference(
        backend_env(backend), x, geom, affine, weight, bias, groups
    )
    assert any(t.isnan().any() or t.isinf().any() for t in ref) or case == "offset-huge"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 6, 4, 5, 3, 3), (2, 16, 16, 4, 5, 3, 1)])
def test_nonfinite_matches_reference_low_precision(backend, dtype, shape, backend_env):
    x, geom, weight, bias = (t.to(dtype) for t in affine_case(*shape))
    x[0, 1, 2, 2] = NAN
    x[1, 2, 1, 3] = INF
    geom[1, 5, 3, 4] = INF
    weight[4, 0, 0, 0] = -INF
    check_packed_against_reference(backend_env(backend), x, geom, True, weight, bias, shape[6])


# ---- Empty inputs -----------------------------------------------------------------------------

EMPTY = {  # name -> n, c, c_out, h, w, k, groups
    "N=0": (0, 4, 4, 5, 6, 3, 4),
    "N=0-dense": (0, 3, 2, 5, 6, 3, 1),
    "H=0": (2, 4, 4, 0, 6, 3, 2),
    "W=0": (1, 3, 2, 5, 0, 1, 1),
    "C=0": (2, 0, 3, 4, 5, 3, 1),
    "C_out=0": (2, 4, 0, 4, 5, 3, 2),
    "C_out=0-depthwise": (1, 2, 0, 3, 4, 3, 2),
    "all-empty": (0, 0, 0, 0, 0, 1, 1),
}


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("name", list(EMPTY))
@pytest.mark.parametrize("affine", [True, False])
def test_empty_inputs(backend, name, affine, backend_env):
    """No crash (the old cpp backward divided by zero for N=0), outputs and gradients of the right
    shape and dtype, equal to the reference; a NaN position still gives NaN position gradients when
    C or C_out is 0 (its rule does not depend on the channels)."""
    n, c, c_out, h, w, k, groups = EMPTY[name]
    x, geom, weight, bias = (affine_case if affine else general_case)(n, c, c_out, h, w, k, groups)
    if geom.numel():
        geom[0, -1, 0, 0] = NAN
    ours, ref = check_packed_against_reference(
        backend_env(backend), x, geom, affine, weight, bias, groups
    )
    assert ours[0].shape == (n, c_out, h, w)
    if n * h * w and (c == 0 or c_out == 0):
        assert ours[2][0, :, 0, 0].isnan().any() and not ours[2][1:].isnan().any()


@pytest.mark.parametrize("backend", ["reference"] + CPU)
def test_empty_batch_public_api_with_bias(backend):
    x, A, b = (
        torch.randn(0, 4, 5, 5, requires_grad=True),
        torch.randn(0, 4, 5, 5),
        torch.randn(0, 2, 5, 5),
    )
    weight, bias = torch.randn(4, 1, 3, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    with dk.use_backend(backend):
        out = dk.affine_deform_conv2d(x, A, b, weight, bias, groups=4)
    out.sum().backward()
    assert out.shape == (0, 4, 5, 5) and x.grad.shape == x.shape
    assert (weight.grad == 0).all() and (bias.grad == 0).all()


# ---- Fakes and layouts ------------------------------------------------------------------------


def layout_case(kind, affine, dtype=torch.float32):
    """torchvision's deform-conv test sizes adapted to this op (batch 33, C=6, C_out=2, groups 2,
    5x4 image, k=3) with x, geometry and weight in the given layout (torchvision permutes the
    weight as (3, 2, 0, 1) -> (2, 3, 1, 0); channels_last/sliced apply to it too)."""
    x, geom, weight, bias = (affine_case if affine else general_case)(
        33, 6, 2, 5, 4, 3, 2, dtype=dtype
    )
    if kind == "torchvision":
        geom = geom.permute(1, 3, 0, 2).contiguous().permute(2, 0, 3, 1)
        weight = weight.permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0)
        return layout(x, kind), geom, weight, bias
    return layout(x, kind), layout(geom, kind), layout(weight, kind), bias


@pytest.mark.parametrize("kind", LAYOUTS)
def test_layout_cases_have_their_layout(kind):
    x, geom, weight, _ = layout_case(kind, False)
    assert x.is_contiguous() == (kind == "contiguous")
    assert geom.is_contiguous() == (kind == "contiguous") and weight.is_contiguous() == (
        kind == "contiguous"
    )


def _meta(t):
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("affine", [True, False])
def test_fake_equals_kernel_layout(backend, kind, affine):
    """The documented rule (op.py): out and dx in x's memory format, dgeom and dweight contiguous,
    each in its input's dtype, and the fakes give exactly the ops' sizes, strides and dtypes,
    forward and backward."""
    x, geom, weight, bias = layout_case(kind, affine)
    if backend == "triton":
        x, geom = x[:3], geom[:3]  # interpreter budget
    out = _packed(x, geom, affine, weight, bias, 2, backend)
    grad_out = torch.randn_like(out)
    grads = _packed_backward(grad_out, x, geom, affine, weight, 2, backend)
    with FakeTensorMode() as mode:
        fx, fg, fw, fb, fgo = (mode.from_tensor(t) for t in (x, geom, weight, bias, grad_out))
        fake_out = _packed(fx, fg, affine, fw, fb, 2, backend)
        fake_grads = _packed_backward(fgo, fx, fg, affine, fw, 2, backend)
    fmt = memory_format_of(x)  # channels-last for the channels_last kind, else contiguous
    assert _meta(fake_out) == _meta(out) and out.is_contiguous(memory_format=fmt)
    for real, fake, inp, f in zip(
        grads,
        fake_grads,
        (x, geom, weight),
        (fmt, torch.contiguous_format, torch.contiguous_format),
    ):
        assert _meta(fake) == _meta(real) and real.is_contiguous(memory_format=f)
        assert real.shape == inp.shape


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("affine", [True, False])
def test_opcheck_layouts(backend, kind, affine):
    x, geom, weight, bias = layout_case(kind, affine, dtype=torch.float64)
    if backend == "triton":
        x, geom = x[:2], geom[:2]  # interpreter budget
    args = (
        x.requires_grad_(),
        geom.requires_grad_(),
        affine,
        weight.requires_grad_(),
        bias,
        2,
        backend,
    )
    torch.library.opcheck(_packed, args)


@pytest.mark.parametrize("backend", ["reference"] + CPU)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_compile_fullgraph_forward_backward_layouts(backend, kind):
    """torch.compile(fullgraph=True) of forward + backward equals eager on every layout (the old
    backward fake returned x's strides and broke this on non-contiguous inputs)."""
    torch._dynamo.reset()
    x, offset, weight, bias = layout_case(kind, False)
    if backend == "triton":
        x, offset = x[:2], offset[:2]

    def forward(x, offset, weight, bias):
        return dk.deform_conv2d(x, offset, weight, bias, groups=2)

    leaves = [
        t.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        for t in (x, offset, weight, bias)
    ]
    results = []
    for fn in (forward, torch.compile(forward, fullgraph=True)):
        with dk.use_backend(backend):  # the backend is chosen outside the compiled region
            out = fn(*leaves)
            results.append((out, torch.autograd.grad(out.square().sum(), leaves)))
    (eager_out, eager_grads), (compiled_out, compiled_grads) = results
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", [b for b in CPU if b != "triton"] + [EMULATED])
@pytest.mark.parametrize("kind", LAYOUTS[1:])
def test_layouts_match_reference(backend, kind):
    x, geom, weight, bias = layout_case(kind, True, dtype=torch.float64)
    x[3, 1, 2, 2] = NAN
    check_packed_against_reference(backend, x, geom, True, weight, bias, 2)


def test_reference_nan_agrees_with_torchvision_where_documented():
    """reference.py's docstring: torchvision gives the same NaN mask for NaN in x, integer positions
    included (zero-weight corners are read). (Non-finite offsets are not given to torchvision: it
    converts a NaN position to an integer index, undefined behaviour that crashed a run.)"""
    import torchvision

    x, offset, weight, _ = general_case(n=1, c=2, c_out=2, groups=1)
    x[0, 0, 2, 2] = (
        NAN  # interior: torchvision differs only at positions exactly -1 (see reference.py)
    )
    x[0, 1, 3, 4] = NAN
    offset.round_()
    ours = reference.deform_conv2d(x, offset, False, weight, None, 1)
    theirs = torchvision.ops.deform_conv2d(x, offset, weight, padding=1)
    assert ours.isnan().any() and torch.equal(ours.isnan(), theirs.isnan())
    torch.testing.assert_close(ours[~ours.isnan()], theirs[~theirs.isnan()])

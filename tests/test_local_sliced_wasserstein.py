"""Local sliced-Wasserstein (LOSW) loss: the ``cpp`` backend against the reference (the authors'
unfold + sort formulation) forward and backward, the reference against a direct transcription of
the formula, the int32 per-pixel sign sums against a gather-based oracle, non-finite and empty
inputs, validation and the custom-op registration.

Tolerances: float64 1e-12 relative; float32 1e-5 relative on the loss and 1e-6 of one gradient
entry's size on gradients (random inputs: no ties within a window). Where ties are possible (NaN,
inf, zeros) the kernel's counts are compared exactly with the oracle's, which sorts stably like the
kernel (ties by pixel index), and the gradients with M^T counts / (N P C' k^2).
"""

import numpy as np
import pytest
import torch
from local_sliced_wasserstein_oracle import check_backend, loss_and_grads, oracle, pairs
from sliced_wasserstein_oracle import CASES, LAYOUTS, nonfinite_case, with_layout
from torch._subclasses.fake_tensor import FakeTensorMode

import dzsr_kernels as dk
from dzsr_kernels._checks import compute_dtype
from dzsr_kernels.local_sliced_wasserstein import local_sliced_wasserstein_loss
from dzsr_kernels.local_sliced_wasserstein import op as losw_op
from dzsr_kernels.local_sliced_wasserstein.reference import local_sliced_wasserstein
from dzsr_kernels.sliced_wasserstein import draw_projections

BACKEND = "cpp"
# (shape, window, stride): windows that tile the map exactly, and odd sizes where the last rows or
# columns are reached by no window; k*k up to 64 (insertion sort) and above (std::sort).
CASES_GEOMETRY = [
    ((2, 5, 8, 8), 4, 2),
    ((1, 3, 11, 13), 4, 2),
    ((3, 6, 9, 7), 3, 2),
    ((2, 4, 7, 10), 2, 3),
    ((1, 2, 12, 11), 9, 1),
    ((2, 1, 5, 6), 1, 2),
    ((1, 4, 6, 6), 6, 2),
]
DTYPES = [torch.float64, torch.float32]


@pytest.fixture(autouse=True, scope="module")
def _cpp_loaded():
    """The C++ extension built and loaded, so that the custom ops can be called directly."""
    with dk.use_backend(BACKEND):
        dk._backend.resolve(losw_op.OP, torch.device("cpu"))


def _tolerances(dtype, scale):
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12 * scale)
    return dict(rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("shape, window, stride", CASES_GEOMETRY)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v_grad", [False, True])
def test_matches_reference(shape, window, stride, dtype, v_grad):
    u = torch.randn(shape, dtype=dtype)
    v = (torch.randn(shape, dtype=dtype) + 0.3).requires_grad_(v_grad)
    proj = draw_projections(shape[1], max(1, shape[1] // 2), dtype=dtype)
    loss, grads = loss_and_grads(BACKEND, u, v, proj, window, stride)
    ref_loss, ref_grads = loss_and_grads("reference", u, v, proj, window, stride)
    assert loss.dtype == dtype and loss.shape == ()
    torch.testing.assert_close(loss, ref_loss, **_tolerances(dtype, 1.0))
    scale = 1.0 / pairs(shape, proj.shape[0], window, stride)
    assert len(grads) == len(ref_grads) == (2 if v_grad else 1)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == dtype and g.shape == shape and g.is_contiguous()
        torch.testing.assert_close(g, r, **_tolerances(dtype, scale))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_match_reference(layout):
    """Channels-last and transposed (non-contiguous) inputs read as their values."""
    shape, window, stride = (2, 6, 9, 11), 4, 2
    u = with_layout(torch.randn(shape), layout)
    v = with_layout(torch.randn(shape), layout).requires_grad_()
    proj = draw_projections(6, 3)
    loss, grads = loss_and_grads(BACKEND, u, v, proj, window, stride)
    ref_loss, ref_grads = loss_and_grads("reference", u, v, proj, window, stride)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    scale = 1.0 / pairs(shape, 3, window, stride)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6 * scale)


def test_half_inputs_compute_in_float32():
    """float16 features: the loss and gradients of the float32 computation, rounded once."""
    u, v = torch.randn(2, 4, 6, 7).half(), torch.randn(2, 4, 6, 7).half()
    proj = draw_projections(4, 2)
    loss, (du,) = loss_and_grads(BACKEND, u, v, proj, 3, 2)
    ref_loss, (ref_du,) = loss_and_grads(BACKEND, u.float(), v.float(), proj, 3, 2)
    assert loss.dtype == du.dtype == torch.float16
    torch.testing.assert_close(loss, ref_loss.half())
    torch.testing.assert_close(du, ref_du.half())


def test_reference_matches_formula():
    """The oracle against a numpy transcription of docs/design.md#local-sliced-wasserstein."""
    u, v = (
        torch.randn(2, 3, 7, 6, dtype=torch.float64),
        torch.randn(2, 3, 7, 6, dtype=torch.float64),
    )
    proj = draw_projections(3, 2, dtype=torch.float64)
    k, s = 3, 2
    un, vn, m = u.numpy(), v.numpy(), proj.numpy()
    total, compared = 0.0, 0
    for n in range(2):
        for y in range(0, 7 - k + 1, s):
            for x in range(0, 6 - k + 1, s):
                a = un[n, :, y : y + k, x : x + k].reshape(3, -1)
                b = vn[n, :, y : y + k, x : x + k].reshape(3, -1)
                for j in range(2):
                    total += np.abs(np.sort(m[j] @ a) - np.sort(m[j] @ b)).sum()
                    compared += k * k
    assert abs(local_sliced_wasserstein(u, v, proj, k, s).item() - total / compared) < 1e-12


@pytest.mark.parametrize("shape, window, stride", CASES_GEOMETRY[:4])
def test_counts_match_the_gather_oracle(shape, window, stride):
    """The forward's int32 outputs: per pixel, the sum over its windows of the sign at its slot."""
    u, v = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    proj = draw_projections(shape[1], 2, dtype=torch.float64)
    loss, count_u, count_v = losw_op._forward(u, v, proj, window, stride, True, BACKEND)
    ref_loss, ref_u, ref_v = oracle(u, v, proj, window, stride)
    assert count_u.dtype == torch.int32 and count_u.shape == (shape[0], 2, shape[2] * shape[3])
    assert torch.equal(count_u, ref_u) and torch.equal(count_v, ref_v)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    # pixels no window reaches (odd sizes) count 0 in every direction
    covered = torch.zeros(shape[2], shape[3], dtype=torch.bool)
    for y in range(0, shape[2] - window + 1, stride):
        for x in range(0, shape[3] - window + 1, stride):
            covered[y : y + window, x : x + window] = True
    assert torch.count_nonzero(count_u[:, :, ~covered.view(-1)]) == 0


def test_equal_inputs_give_zero_loss_and_zero_gradient():
    u = torch.randn(2, 6, 7, 5)
    for backend in (BACKEND, "reference"):
        v = u.clone().requires_grad_()
        loss, (gu, gv) = loss_and_grads(backend, u, v, draw_projections(6, 3), 3, 2)
        assert loss.item() == 0.0
        assert torch.count_nonzero(gu) == 0 and torch.count_nonzero(gv) == 0


def test_gradcheck_float64():
    proj = draw_projections(3, 2, dtype=torch.float64)
    u = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    with dk.use_backend(BACKEND):
        assert torch.autograd.gradcheck(
            lambda a, b: local_sliced_wasserstein_loss(a, b, 3, 1, proj=proj), (u, v), eps=1e-7
        )


@pytest.mark.parametrize("need_v_count", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(need_v_count, layout):
    u = with_layout(torch.randn(2, 5, 6, 7), layout).requires_grad_()
    v = with_layout(torch.randn(2, 5, 6, 7), layout).requires_grad_(need_v_count)
    proj = draw_projections(5, 2)
    torch.library.opcheck(losw_op._forward, (u, v, proj, 3, 2, need_v_count, BACKEND))
    count = torch.randint(-4, 5, (2, 2, 42), dtype=torch.int32)
    torch.library.opcheck(losw_op._backward_op, (count, proj * 0.1, BACKEND))


def _meta(t):
    return tuple(t.shape), t.stride(), t.dtype


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "shape, dtype",
    [((2, 5, 6, 7), torch.float32), ((1, 3, 5, 4), torch.float64), ((2, 4, 5, 5), torch.float16)]
    + [((0, 5, 4, 4), torch.float32), ((2, 0, 4, 4), torch.float32)],
)
@pytest.mark.parametrize("need_v_count", [False, True])
def test_fakes_equal_kernel_outputs(layout, shape, dtype, need_v_count):
    """The fakes return the sizes, strides and dtypes of the kernel's outputs (new, contiguous)."""
    u, v = (with_layout(torch.randn(shape, dtype=dtype), layout) for _ in range(2))
    m = draw_projections(shape[1], 2, dtype=compute_dtype(u))
    real = losw_op._forward(u, v, m, 3, 2, need_v_count, BACKEND)
    scaled = m * 0.1
    real_grad = losw_op._backward_op(real[1], scaled, BACKEND)
    with FakeTensorMode() as mode:
        fake = losw_op._forward(*map(mode.from_tensor, (u, v, m)), 3, 2, need_v_count, BACKEND)
        fake_grad = losw_op._backward_op(*map(mode.from_tensor, (real[1], scaled)), BACKEND)
    assert [_meta(t) for t in fake] == [_meta(t) for t in real]
    assert _meta(fake_grad) == _meta(real_grad)
    assert all(t.is_contiguous() for t in (*real, real_grad))


def test_compile_fullgraph_forward_backward():
    """Inductor checks the fakes' strides against the kernel's; compiled equals eager."""
    u = with_layout(torch.randn(2, 6, 7, 9), "channels_last").requires_grad_()
    v = torch.randn(2, 6, 7, 9, requires_grad=True)
    proj = draw_projections(6, 3)

    def loss_fn(a, b):
        return local_sliced_wasserstein_loss(a, b, 3, proj=proj)

    torch._dynamo.reset()
    with dk.use_backend(BACKEND):
        eager = loss_fn(u, v)
        eager_grads = torch.autograd.grad(eager, (u, v))
        compiled = torch.compile(loss_fn, fullgraph=True)(u, v)
        grads = torch.autograd.grad(compiled, (u, v))
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-9)


def test_default_stride_and_projections():
    """stride 2 and C // 2 directions drawn with the generator, shared by every window."""
    u, v = torch.randn(2, 8, 9, 9), torch.randn(2, 8, 9, 9)
    with dk.use_backend(BACKEND):
        a = local_sliced_wasserstein_loss(u, v, 4, generator=torch.Generator().manual_seed(7))
        b = local_sliced_wasserstein_loss(u, v, 4, generator=torch.Generator().manual_seed(7))
        c = local_sliced_wasserstein_loss(u, v, 4, generator=torch.Generator().manual_seed(8))
        fresh = local_sliced_wasserstein_loss(u, v, 4), local_sliced_wasserstein_loss(u, v, 4)
    assert a.item() == b.item() and a.item() != c.item() and fresh[0].item() != fresh[1].item()
    proj = draw_projections(8, 4, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, local_sliced_wasserstein(u, v, proj, 4, 2), rtol=1e-5, atol=1e-6)


def test_v_without_grad_gets_none_and_no_v_counts():
    u = torch.randn(1, 4, 5, 5, requires_grad=True)
    v = torch.randn(1, 4, 5, 5)
    _, _, count_v = losw_op._forward(u.detach(), v, draw_projections(4, 2), 3, 2, False, BACKEND)
    assert count_v.numel() == 0 and count_v.dtype == torch.int32
    with dk.use_backend(BACKEND):
        local_sliced_wasserstein_loss(u, v, 3).backward()
    assert v.grad is None and torch.count_nonzero(u.grad) > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_nonfinite_matches_reference(dtype, case):
    """NaN, inf, signed zeros and extreme magnitudes in (2, 3, 2, 3) maps, 2x2 windows at stride
    1: the loss as the reference (same NaN / inf), the counts as the stable oracle, finite
    gradients equal to M^T counts / (N P C' k^2)."""
    check_backend(BACKEND, *nonfinite_case(case, dtype), 2, 1)


@pytest.mark.parametrize("backend", ["reference", BACKEND])
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (0, 0, 3, 3)])
def test_empty_inputs(backend, shape):
    """N = 0: the mean of nothing, NaN; C = 0 (N > 0): every projection is 0, loss 0. The
    gradients have the inputs' (empty) shapes."""
    u, v = torch.randn(shape), torch.randn(shape).requires_grad_()
    loss, grads = loss_and_grads(backend, u, v, draw_projections(shape[1], 2), 2, 2)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.isnan().item() if shape[0] == 0 else loss.item() == 0.0
    for g in grads:
        assert g.shape == shape and g.numel() == 0


_EYE2 = torch.eye(4)[:2]
BAD_INPUTS = [
    ("window_above_h", dict(window=6), ValueError, r"window must be an int in \[1, min\(H, W\)\]"),
    (
        "window_above_w",
        dict(window=6, u=torch.randn(2, 4, 7, 5), v=torch.randn(2, 4, 7, 5)),
        ValueError,
        r"window must be an int in \[1, min\(H, W\)\] = \[1, 5\]",
    ),
    ("window_zero", dict(window=0), ValueError, "window must be an int in"),
    ("window_negative", dict(window=-2), ValueError, "window must be an int in"),
    ("window_float", dict(window=2.0), TypeError, "window must be a positive int, got float"),
    ("window_bool", dict(window=True), TypeError, "window must be a positive int, got bool"),
    ("stride_zero", dict(stride=0), ValueError, "stride must be a positive int, got 0"),
    ("stride_negative", dict(stride=-1), ValueError, "stride must be a positive int, got -1"),
    ("stride_none", dict(stride=None), TypeError, "stride must be a positive int, got NoneType"),
    (
        "proj_other_channels",
        dict(proj=torch.eye(5)[:2]),
        ValueError,
        r"proj must have shape \(C', C=4\) with size 4",
    ),
    ("proj_1_dim", dict(proj=torch.randn(4)), ValueError, r"proj must have shape \(C', C=4\)"),
    ("proj_no_rows", dict(proj=torch.empty(0, 4)), ValueError, "proj must have at least one row"),
    ("proj_not_unit", dict(proj=_EYE2 * 1.1), ValueError, "proj rows must have unit L2 norm"),
    (
        "proj_and_generator",
        dict(proj=_EYE2, generator=torch.Generator()),
        ValueError,
        "give proj or generator",
    ),
    ("u_3_dims", dict(u=torch.randn(4, 5, 5)), ValueError, r"u must have shape \(N, C, H, W\)"),
    ("v_other_size", dict(v=torch.randn(2, 4, 5, 6)), ValueError, "v must have the shape of u"),
    (
        "u_int",
        dict(u=torch.ones(2, 4, 5, 5, dtype=torch.int32)),
        TypeError,
        "u must be a floating tensor",
    ),
]


@pytest.mark.parametrize("case, bad, error, match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs(case, bad, error, match):
    """Each mistake raises one clear error naming the argument, before any backend runs."""
    args = {"u": torch.randn(2, 4, 5, 5), "v": torch.randn(2, 4, 5, 5), "window": 3, **bad}
    with dk.use_backend(BACKEND), pytest.raises(error, match=match):
        local_sliced_wasserstein_loss(**args)


@pytest.mark.gpu
def test_cuda_cpp_runs_the_reference_beyond_the_band():
    """Windows whose band (window x W pixels) exceeds the CUDA kernel's shared memory run the
    reference under the cpp backend: the same loss and gradients, bit for bit."""
    from dzsr_kernels.local_sliced_wasserstein import cpp_kernel

    width = cpp_kernel.CUDA_BAND_PIXELS[torch.float32] // 4 + 1
    u, v = torch.randn(1, 4, 4, width, device="cuda"), torch.randn(1, 4, 4, width, device="cuda")
    proj = draw_projections(4, 2, device="cuda")
    loss, grads = loss_and_grads(BACKEND, u, v.requires_grad_(), proj, 4, 2)
    ref_loss, ref_grads = loss_and_grads("reference", u, v, proj, 4, 2)
    assert torch.equal(loss, ref_loss)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)

"""Property-based fuzzing of the sliced-Wasserstein loss (hypothesis, profile "dzsr" of conftest.py).

Each example draws a tiny shape (N <= 2, C <= 4, H, W <= 3, 1-pixel maps included, one example in
eight with a dim of 0), C' <= 3, a dtype (float64/float32/float16/bfloat16), a memory layout
(contiguous, transposed, channels-last), a magnitude (unit, huge, tiny: powers of two per dtype
chosen so that sums do not overflow and products stay normal), up to six special values (NaN of
either sign, +-inf, +-0.0) at random places of u or v, optionally a pixel of u duplicated (a tie
in every direction), random or axis-aligned unit directions (axis directions make 0 * inf = NaN)
and whether v needs a gradient. Every fast backend must agree with the reference as
sliced_wasserstein_oracle.check_backend checks it (equal NaN/inf masks, close finite values,
tie-invariant signs); the CUDA forward is fuzzed through the emulation. Invalid combinations of
shapes and dtypes must raise the one documented error.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sliced_wasserstein_oracle import (
    LAYOUTS,
    check_backend,
    check_forward_outputs,
    emulated_cuda_ops,
    loss_and_grads,
    with_layout,
)

import dzsr_kernels as dk
from dzsr_kernels._checks import compute_dtype
from dzsr_kernels.sliced_wasserstein import draw_projections, sliced_wasserstein_loss

NAN, INF = float("nan"), float("inf")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SPECIALS = [NAN, -NAN, INF, -INF, 0.0, -0.0]
# The Triton interpreter computes inf - inf = NaN with numpy, which warns.
INF_MINUS_INF_IN_NUMPY = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning"
)
# The Triton interpreter and the CUDA emulation are slower: a third of the profile's examples.
FEW = max(4, settings.default.max_examples // 3)
MAGNITUDE = {
    "unit": {d: 1.0 for d in DTYPES},
    "huge": {
        torch.float64: 2.0**900,
        torch.float32: 2.0**100,
        torch.bfloat16: 2.0**100,
        torch.float16: 2.0**10,
    },
    "tiny": {
        torch.float64: 2.0**-900,
        torch.float32: 2.0**-100,
        torch.bfloat16: 2.0**-100,
        torch.float16: 2.0**-10,
    },
}


@st.composite
def sw_cases(draw):
    shape = [
        draw(st.integers(1, 2)),
        draw(st.integers(1, 4)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
    ]
    if draw(st.integers(0, 7)) == 0:  # one example in eight has an empty dim
        shape[draw(st.integers(0, 3))] = 0
    shape = tuple(shape)
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    places = st.tuples(
        st.sampled_from("uv"), st.integers(0, max(numel - 1, 0)), st.sampled_from(SPECIALS)
    )
    return dict(
        shape=shape,
        num_proj=draw(st.integers(1, 3)),
        dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(LAYOUTS)),
        magnitude=draw(st.sampled_from(sorted(MAGNITUDE))),
        specials=draw(st.lists(places, max_size=6 if numel else 0)),
        duplicate=draw(st.booleans()),
        axis_proj=draw(st.booleans()),
        v_grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def build(case):
    """(u, v, proj, v_grad) of a drawn case."""
    n, c, h, w = case["shape"]
    dtype, scale = case["dtype"], MAGNITUDE[case["magnitude"]][case["dtype"]]
    g = torch.Generator().manual_seed(case["seed"])
    u = torch.randn(case["shape"], generator=g, dtype=torch.float64) * scale
    v = (torch.randn(case["shape"], generator=g, dtype=torch.float64) + 0.25) * scale
    if case["duplicate"] and h * w > 1:
        u.view(n, c, h * w)[:, :, -1] = u.view(n, c, h * w)[:, :, 0]
    for side, index, value in case["specials"]:
        (u if side == "u" else v).view(-1)[index] = value
    u, v = with_layout(u.to(dtype), case["layout"]), with_layout(v.to(dtype), case["layout"])
    pdtype = compute_dtype(u)
    if case["axis_proj"] and c > 0:
        proj = torch.eye(c, dtype=pdtype)[torch.randint(c, (case["num_proj"],), generator=g)]
    else:
        proj = draw_projections(c, case["num_proj"], g, dtype=pdtype)
    return u, v, proj, case["v_grad"]


@given(case=sw_cases())
def test_fuzz_cpp_matches_reference(case):
    check_backend("cpp", *build(case))


@INF_MINUS_INF_IN_NUMPY
@settings(max_examples=FEW)
@given(case=sw_cases())
def test_fuzz_triton_matches_reference(case):
    check_backend("triton", *build(case))


@given(case=sw_cases())
def test_fuzz_reference_rules(case):
    """reference.py's rules on the oracle itself: the loss has u's dtype and is NaN with empty
    input; the gradients have the inputs' shapes and dtypes and are always finite."""
    u, v, proj, v_grad = build(case)
    loss, grads = loss_and_grads("reference", u, v, proj, v_grad)
    assert loss.shape == () and loss.dtype == u.dtype
    n, _, h, w = u.shape
    if n * h * w == 0:
        assert loss.isnan()
    for g, x in zip(grads, (u, v)):
        assert g.shape == x.shape and g.dtype == x.dtype and bool(g.isfinite().all())


@pytest.fixture(scope="module")
def emulated():
    return emulated_cuda_ops().sliced_wasserstein_forward


@settings(max_examples=FEW)
@given(case=sw_cases())
def test_fuzz_emulated_cuda_forward_matches_reference(emulated, case):
    u, v, proj, _ = build(case)
    m = proj.to(compute_dtype(u))
    check_forward_outputs(*emulated(u, v, m, True), u, v, m)


FLOAT_OR_NOT = DTYPES + [torch.int32, torch.bool]


@given(
    shape_u=st.tuples(*[st.integers(0, 3)] * 4),
    shape_v=st.tuples(*[st.integers(0, 3)] * 4),
    dtype_u=st.sampled_from(FLOAT_OR_NOT),
    dtype_v=st.sampled_from(FLOAT_OR_NOT),
    proj_shape=st.tuples(st.integers(0, 2), st.integers(0, 4)),
)
def test_fuzz_invalid_inputs_give_one_clear_error(shape_u, shape_v, dtype_u, dtype_v, proj_shape):
    """Random shapes and dtypes of u, v and proj: either a loss, or the documented error for the
    first thing wrong (in the order the API checks them), naming the argument."""
    u, v = torch.zeros(shape_u, dtype=dtype_u), torch.zeros(shape_v, dtype=dtype_v)
    proj = torch.zeros(proj_shape)
    if proj.numel():
        proj[:, 0] = 1.0  # unit rows
    expected = None
    if not dtype_u.is_floating_point:
        expected = (TypeError, "u must be a floating tensor")
    elif not dtype_v.is_floating_point:
        expected = (TypeError, "v must be a floating tensor")
    elif shape_u != shape_v:
        expected = (ValueError, "v must have the shape of u")
    elif dtype_u != dtype_v:
        expected = (TypeError, "u and v must share one dtype")
    elif proj_shape[1] != shape_u[1]:
        expected = (ValueError, "proj must have shape")
    elif proj_shape[0] == 0:
        expected = (ValueError, "proj must have at least one row")
    with dk.use_backend("cpp"):
        if expected is None:
            loss = sliced_wasserstein_loss(u, v, proj=proj)
            assert loss.dtype == u.dtype
        else:
            with pytest.raises(expected[0], match=expected[1]):
                sliced_wasserstein_loss(u, v, proj=proj)

"""Property-based fuzzing of the local sliced-Wasserstein loss (hypothesis, profile "dzsr").

Each example draws a tiny shape (N <= 2, C <= 4, H, W <= 6, one example in eight with N or C of
0), a window k in [1, min(H, W)] and a stride in [1, 3], C' <= 3, a dtype (float64, float32,
float16, bfloat16), a memory layout, a magnitude (as test_fuzz_sliced_wasserstein.py), up to six
special values (NaN of either sign, +-inf, +-0.0) in u or v, optionally a duplicated pixel of u
(ties in every window holding both), random or axis-aligned unit directions (0 * inf = NaN) and
whether v needs a gradient. The cpp backend must agree with the stable gather oracle and the
reference as local_sliced_wasserstein_oracle.check_backend checks it, and the CUDA forward (through
the emulation, fewer examples) the oracle as check_forward checks it. Invalid windows and strides
must raise the one documented error.
"""

from __future__ import annotations

import pytest
import torch
from cuda_emulation_build import emulated_library
from hypothesis import given, settings
from hypothesis import strategies as st
from local_sliced_wasserstein_oracle import check_backend, check_forward
from sliced_wasserstein_oracle import LAYOUTS, with_layout
from test_fuzz_sliced_wasserstein import DTYPES, FEW, MAGNITUDE, SPECIALS

import dzsr_kernels as dk
from dzsr_kernels._checks import compute_dtype
from dzsr_kernels.local_sliced_wasserstein import local_sliced_wasserstein_loss
from dzsr_kernels.sliced_wasserstein import draw_projections


@st.composite
def losw_cases(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if draw(st.integers(0, 7)) == 0:  # one example in eight has N = 0 or C = 0
        n, c = (0, c) if draw(st.booleans()) else (n, 0)
    numel = n * c * h * w
    places = st.tuples(
        st.sampled_from("uv"), st.integers(0, max(numel - 1, 0)), st.sampled_from(SPECIALS)
    )
    return dict(
        shape=(n, c, h, w),
        window=draw(st.integers(1, min(h, w))),
        stride=draw(st.integers(1, 3)),
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
    """(u, v, proj, window, stride, v_grad) of a drawn case."""
    n, c, h, w = case["shape"]
    dtype, scale = case["dtype"], MAGNITUDE[case["magnitude"]][case["dtype"]]
    g = torch.Generator().manual_seed(case["seed"])
    u = torch.randn(case["shape"], generator=g, dtype=torch.float64) * scale
    v = (torch.randn(case["shape"], generator=g, dtype=torch.float64) + 0.25) * scale
    if case["duplicate"] and h * w > 1:
        u.view(n, c, h * w)[:, :, 1] = u.view(n, c, h * w)[:, :, 0]
    for side, index, value in case["specials"]:
        (u if side == "u" else v).view(-1)[index] = value
    u, v = with_layout(u.to(dtype), case["layout"]), with_layout(v.to(dtype), case["layout"])
    pdtype = compute_dtype(u)
    if case["axis_proj"] and c > 0:
        proj = torch.eye(c, dtype=pdtype)[torch.randint(c, (case["num_proj"],), generator=g)]
    else:
        proj = draw_projections(c, case["num_proj"], g, dtype=pdtype)
    return u, v, proj, case["window"], case["stride"], case["v_grad"]


@given(case=losw_cases())
def test_fuzz_cpp_matches_oracle_and_reference(case):
    check_backend("cpp", *build(case))


@pytest.fixture(scope="module")
def emulated():
    ops = emulated_library("dzsr_losw_cuda_emu", "local_sliced_wasserstein_emulated.cpp")
    return ops.local_sliced_wasserstein_forward


@settings(max_examples=FEW)
@given(case=losw_cases())
def test_fuzz_emulated_cuda_forward_matches_oracle(emulated, case):
    """The CUDA forward (through the emulation) on the same cases: exact counts, the loss."""
    u, v, proj, window, stride, _ = build(case)
    check_forward(emulated, u, v, proj, window, stride)


@given(
    size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    window=st.integers(-2, 6),
    stride=st.integers(-1, 3),
)
def test_fuzz_invalid_windows_give_one_clear_error(size, window, stride):
    """Either a loss, or the window error (k outside [1, min(H, W)]) before the stride error."""
    u = torch.zeros(1, 2, *size)
    with dk.use_backend("cpp"):
        if not 1 <= window <= min(size):
            with pytest.raises(ValueError, match="window must be an int in"):
                local_sliced_wasserstein_loss(u, u, window, stride)
        elif stride < 1:
            with pytest.raises(ValueError, match="stride must be a positive int"):
                local_sliced_wasserstein_loss(u, u, window, stride)
        else:
            assert local_sliced_wasserstein_loss(u, u, window, stride).item() == 0.0

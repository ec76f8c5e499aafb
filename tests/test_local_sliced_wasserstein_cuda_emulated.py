"""The CUDA local sliced-Wasserstein forward (csrc/local_sliced_wasserstein/local_sliced_wasserstein_cuda.cu)
run on CPU threads through the test-only CUDA execution-model stand-in (tests/cuda_emulation/),
against the stable gather oracle (local_sliced_wasserstein_oracle.oracle); the public API on a real
GPU where one exists (marked gpu).

The kernel ranks each pixel within its window (ties by the window's row-major order, a stable
sort), so its per-pixel sign sums must equal the oracle's exactly, with ties, NaN and infinities;
its loss must equal the oracle's (same NaN / inf, finite values within the dtype's tolerance).
The geometries cover what the kernel's walk down the map can get wrong: several steps of window
rows through the ring of band rows (wrapping), several passes of (window, slot) pairs per step,
strides below, equal to and above the window (rows the windows skip), one window per axis, the
band's capacity edge (window * W = 2048 float32 / 1024 float64) and one past it (an error naming
the limit). Outputs are NaN/-1-poisoned (DZSR_POISON=1, conftest), so every sum must be written.
The backward is the global loss's CUDA GEMM, checked with int32 sums in
test_sliced_wasserstein_cuda_emulated.py.
"""

from __future__ import annotations

import pytest
import torch
from cuda_emulation_build import emulated_library
from local_sliced_wasserstein_oracle import check_backend, check_forward
from sliced_wasserstein_oracle import CASES, nonfinite_case

from dzsr_kernels.local_sliced_wasserstein import cpp_kernel
from dzsr_kernels.sliced_wasserstein import draw_projections


@pytest.fixture(scope="module")
def forward():
    ops = emulated_library("dzsr_losw_cuda_emu", "local_sliced_wasserstein_emulated.cpp")
    return ops.local_sliced_wasserstein_forward


# (dtype, shape, window, stride, what it exercises)
GEOMETRIES = [
    (torch.float32, (2, 5, 9, 11), 3, 2, "rows and columns the windows leave out"),
    (torch.float32, (1, 3, 20, 200), 8, 2, "band of 10 rows: 4 steps, 7 passes per step"),
    (
        torch.float32,
        (1, 2, 30, 150),
        12,
        5,
        "band of k rows: 4 steps of one window row, ring wraps",
    ),
    (torch.float32, (2, 2, 11, 13), 2, 3, "stride above the window: skipped rows and columns"),
    (torch.float32, (1, 2, 6, 7), 1, 1, "k = 1"),
    (torch.float32, (1, 2, 5, 5), 5, 1, "one window covering the map"),
    (torch.float32, (1, 2, 5, 6), 3, 1000, "stride beyond the map: one window per axis"),
    (torch.float32, (1, 3, 48, 48), 8, 2, "the authors' relu3_2 geometry, two steps"),
    (torch.float32, (1, 1, 9, 256), 8, 2, "window * W = 2048: the float32 capacity"),
    (torch.float64, (2, 3, 9, 11), 3, 2, "float64"),
    (torch.float64, (1, 2, 20, 100), 8, 2, "float64 band of 10 rows: several steps"),
    (torch.float64, (1, 1, 9, 128), 8, 1, "window * W = 1024: the float64 capacity"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype, shape, window, stride, what", GEOMETRIES, ids=[g[4] for g in GEOMETRIES]
)
def test_emulated_cuda_matches_oracle(forward, dtype, shape, window, stride, what):
    g = torch.Generator().manual_seed(sum(shape) * 31 + window)
    u = torch.randn(shape, generator=g, dtype=dtype)
    v = torch.randn(shape, generator=g, dtype=dtype) + 0.2
    proj = draw_projections(shape[1], max(1, shape[1] // 2), g, dtype=dtype)
    check_forward(forward, u, v, proj, window, stride)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("window, stride", [(3, 1), (4, 2), (2, 3)])
def test_emulated_cuda_ties(forward, dtype, window, stride):
    """Small integers on axis directions: long runs of equal values in every window (the rank's
    tie-break by row-major position must give the stable sort's slots), plus NaN of both signs,
    infinities and -0.0."""
    g = torch.Generator().manual_seed(7 * window + stride)
    u = torch.randint(-2, 3, (2, 3, 9, 10), generator=g).to(dtype)
    v = torch.randint(-2, 3, (2, 3, 9, 10), generator=g).to(dtype)
    u[0, 0, 1, 1], u[1, 2, 4, 4], v[0, 1, 2, 3] = float("nan"), -float("nan"), float("nan")
    u[0, 1, 0, 0], v[0, 1, 0, 1], v[1, 0, 5, 5] = float("inf"), float("inf"), -0.0
    proj = torch.eye(3, dtype=dtype)[[0, 2, 1, 0]]
    check_forward(forward, u, v, proj, window, stride)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_emulated_cuda_nonfinite(forward, dtype, case):
    check_forward(forward, *nonfinite_case(case, dtype), 2, 1)


def test_emulated_cuda_empty(forward):
    """N = 0 launches no window kernel: the mean of nothing (NaN) and empty sums; C = 0 projects
    every point to 0: a zero loss and zero sums."""
    loss, sum_u, sum_v = forward(
        torch.randn(0, 4, 5, 5), torch.randn(0, 4, 5, 5), draw_projections(4, 2), 3, 2, True
    )
    assert loss.isnan() and sum_u.shape == sum_v.shape == (0, 2, 25)
    u = torch.randn(2, 0, 5, 5)
    loss, sum_u, sum_v = forward(u, u, torch.zeros(1, 0), 3, 2, True)
    assert loss.item() == 0.0 and sum_u.shape == (2, 1, 25) and not sum_u.any() and not sum_v.any()


def test_emulated_cuda_is_deterministic(forward):
    u, v = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    proj = draw_projections(4, 2)
    first, second = forward(u, v, proj, 4, 2, True), forward(u, v, proj, 4, 2, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_band_capacity_is_the_dispatch_rule(forward, dtype):
    """One pixel past the band the kernel refuses, naming the limit, and cpp_kernel.supports sends
    the case to the reference before it gets there; at the capacity both accept it."""
    band = cpp_kernel.CUDA_BAND_PIXELS[dtype]
    cuda = torch.device("cuda")
    assert cpp_kernel.supports(cuda, band // 8, 8, dtype)
    assert not cpp_kernel.supports(cuda, band // 8 + 1, 8, dtype)
    assert cpp_kernel.supports(torch.device("cpu"), 10**6, 8, dtype)
    u = torch.randn(1, 2, 8, band // 8 + 1, dtype=dtype)
    with pytest.raises(RuntimeError, match=rf"window \* W <= {band}"):
        forward(u, u, draw_projections(2, 1, dtype=dtype), 8, 2, True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, window", [((2, 6, 24, 24), 4), ((2, 4, 48, 48), 8)])
def test_cuda_matches_oracle_and_reference(dtype, shape, window):
    """On a GPU the cpp backend runs the kernel: counts as the oracle, the loss as the reference,
    gradients M^T counts / (N P C' k^2) (check_backend)."""
    u = torch.randn(shape, dtype=dtype, device="cuda")
    v = torch.randn(shape, dtype=dtype, device="cuda")
    proj = draw_projections(shape[1], shape[1] // 2, dtype=dtype, device="cuda")
    check_backend("cpp", u, v, proj, window, 2)

"""The CUDA sliced-Wasserstein forward (csrc/sliced_wasserstein/sliced_wasserstein_cuda.cu: torch.sort,
then the fused |a - b| / int8 sign-scatter kernel with its shared-memory reduction) run on CPU
threads through the test-only CUDA execution-model stand-in (tests/cuda_emulation/), against the
reference: random shapes (several row chunks), NaN / inf / signed zeros / extreme magnitudes and
empty inputs. The backward is the device-generic ATen GEMM the cpp tests cover."""

from __future__ import annotations

import pytest
import torch
from sliced_wasserstein_oracle import (
    CASES,
    check_forward_outputs,
    emulated_cuda_forward,
    nonfinite_case,
)

from dzsr_kernels.sliced_wasserstein import draw_projections


@pytest.fixture(scope="module")
def emulated():
    return emulated_cuda_forward()


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, num_proj", [((2, 5, 3, 7), 2), ((1, 3, 11, 13), 1), ((1, 2, 65, 65), 1)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_emulated_cuda_matches_reference(emulated, shape, num_proj, dtype):
    """(1, 2, 65, 65): L = 4225 spans two 4096-element chunks of a row."""
    u, v = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype) + 0.2
    proj = draw_projections(shape[1], num_proj, dtype=dtype)
    check_forward_outputs(*emulated(u, v, proj, True), u, v, proj)
    loss, sign_u, sign_v = emulated(u, v, proj, False)
    assert sign_v.shape == (0,) and sign_u.shape == (shape[0], num_proj, shape[2] * shape[3])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_emulated_cuda_nonfinite(emulated, dtype, case):
    u, v, proj = nonfinite_case(case, dtype)
    check_forward_outputs(*emulated(u, v, proj, True), u, v, proj)


@pytest.mark.parametrize(
    "shape, num_proj", [((0, 3, 2, 2), 2), ((2, 3, 0, 2), 2), ((2, 0, 2, 2), 1), ((2, 3, 2, 2), 0)]
)
def test_emulated_cuda_empty(emulated, shape, num_proj):
    """Nothing to launch (a zero grid dimension would be a CUDA launch error): NaN for the mean of
    nothing, 0 for C = 0, outputs of the documented shapes."""
    u, v = torch.randn(shape), torch.randn(shape)
    proj = torch.zeros(num_proj, shape[1])
    loss, sign_u, sign_v = emulated(u, v, proj, True)
    n, length = shape[0], shape[2] * shape[3]
    assert sign_u.shape == sign_v.shape == (n, num_proj, length)
    if n * num_proj * length == 0:
        assert loss.isnan()
    else:
        assert loss.item() == 0.0 and torch.count_nonzero(sign_u) == 0

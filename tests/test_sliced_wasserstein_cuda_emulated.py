"""The CUDA sliced-Wasserstein kernels (csrc/sliced_wasserstein/sliced_wasserstein_cuda.cu) run on CPU
threads through the test-only CUDA execution-model stand-in (tests/cuda_emulation/), against the
reference; the same checks run on a real GPU where one exists (marked gpu).

Forward: rows of L <= 4096 (float32) / 2048 (float64) take the on-chip path (a stable block radix
sort of both rows per block, in three block configurations: up to 64, 128 and 512 / 256 threads),
longer rows the fallback (torch.sort, then the compare kernel in chunks of 4096). On the on-chip
path the signs must equal, element for element, those of a stable torch.sort (ties and NaNs keep
their input order); everywhere they must agree with the reference group-wise
(sliced_wasserstein_oracle). Backward: the batched GEMM on the int8 signs, with the sample-group and
column-chunk splits forced by a small DZSR_SW_BLOCK_BYTES.
"""

from __future__ import annotations

import pytest
import torch
from sliced_wasserstein_oracle import (
    CASES,
    RTOL,
    assert_signs_equivalent,
    check_forward_outputs,
    emulated_cuda_ops,
    nonfinite_case,
    projected,
    reference_signs,
    require_backend,
    stable_signs,
)

from dzsr_kernels.sliced_wasserstein import draw_projections
from dzsr_kernels.sliced_wasserstein import op as sw_op

ON_CHIP_CAPACITY = {torch.float32: 4096, torch.float64: 2048}


@pytest.fixture(scope="module")
def emulated():
    return emulated_cuda_ops()


def check_emulated_forward(emulated, u, v, proj) -> None:
    """Both need_v_sign variants against the reference; exact stable-sort signs on chip."""
    loss, sign_u, sign_v = emulated.sliced_wasserstein_forward(u, v, proj, True)
    check_forward_outputs(loss, sign_u, sign_v, u, v, proj)
    length = u.shape[2] * u.shape[3]
    if length <= ON_CHIP_CAPACITY[proj.dtype]:
        exact_u, exact_v = stable_signs(u, v, proj)
        assert torch.equal(sign_u, exact_u) and torch.equal(sign_v, exact_v)
    loss_u, sign_u_only, no_v = emulated.sliced_wasserstein_forward(u, v, proj, False)
    assert no_v.shape == (0,) and torch.equal(sign_u_only, sign_u)
    assert torch.equal(loss_u, loss) or (loss_u.isnan() and loss.isnan())


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype, shape",
    [
        (torch.float32, (2, 5, 3, 7)),  # L = 21: 32 threads, most of them without a slot
        (torch.float32, (1, 3, 11, 13)),  # L = 143: odd, 32 threads (64-thread configuration)
        (torch.float32, (1, 2, 20, 30)),  # L = 600: 96 threads (128-thread configuration)
        (torch.float32, (1, 2, 33, 37)),  # L = 1221: 160 threads (512-thread configuration)
        (torch.float32, (1, 2, 64, 64)),  # L = 4096: the float32 capacity, 512 threads
        (torch.float32, (1, 2, 65, 65)),  # L = 4225: fallback, two 4096-element chunks
        (torch.float64, (2, 5, 3, 7)),
        (torch.float64, (1, 2, 32, 64)),  # L = 2048: the float64 capacity, 256 threads
        (torch.float64, (1, 2, 41, 50)),  # L = 2050: fallback
    ],
)
def test_emulated_cuda_matches_reference(emulated, dtype, shape):
    u, v = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype) + 0.2
    proj = draw_projections(shape[1], max(1, shape[1] // 2), dtype=dtype)
    check_emulated_forward(emulated, u, v, proj)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("length_shape", [(3, 5), (16, 17)])
def test_emulated_cuda_ties(emulated, dtype, length_shape):
    """Small integers on axis directions: long runs of equal projected values (and NaNs, and
    -0.0 against +0.0), where only a stable sort gives the stable-sort signs."""
    shape = (2, 3, *length_shape)
    u = torch.randint(-2, 3, shape).to(dtype)
    v = torch.randint(-2, 3, shape).to(dtype)
    u.view(-1)[::7] = -0.0
    u.view(-1)[5::11] = float("nan")
    v.view(-1)[3::13] = float("nan")
    check_emulated_forward(emulated, u, v, torch.eye(3, dtype=dtype)[:2])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_emulated_cuda_nonfinite(emulated, dtype, case):
    u, v, proj = nonfinite_case(case, dtype)
    check_emulated_forward(emulated, u, v, proj)


@pytest.mark.parametrize(
    "shape, num_proj", [((0, 3, 2, 2), 2), ((2, 3, 0, 2), 2), ((2, 0, 2, 2), 1), ((2, 3, 2, 2), 0)]
)
def test_emulated_cuda_empty(emulated, shape, num_proj):
    """Nothing to launch but the loss (a zero grid dimension would be a CUDA launch error): NaN for
    the mean of nothing, 0 for C = 0, outputs of the documented shapes; the backward writes zeros
    (its output is NaN-poisoned in the tests) of shape (N, C, L)."""
    u, v = torch.randn(shape), torch.randn(shape)
    proj = torch.zeros(num_proj, shape[1])
    loss, sign_u, sign_v = emulated.sliced_wasserstein_forward(u, v, proj, True)
    n, length = shape[0], shape[2] * shape[3]
    assert sign_u.shape == sign_v.shape == (n, num_proj, length)
    if n * num_proj * length == 0:
        assert loss.isnan()
    else:
        assert loss.item() == 0.0 and torch.count_nonzero(sign_u) == 0
    du = emulated.sliced_wasserstein_backward(sign_u, proj)
    assert du.shape == (n, shape[1], length) and torch.count_nonzero(du) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("budget", [None, "1200", "64"])
@pytest.mark.parametrize("sign_dtype", [torch.int8, torch.int32])
def test_emulated_cuda_backward(emulated, monkeypatch, dtype, budget, sign_dtype):
    """proj_scaled^T sign[n] per sample: one batched GEMM (no budget), sample groups of two
    (1200 bytes at float32), column chunks of one sample (64 bytes); int8 signs, or the int32 sums
    of signs the local loss passes."""
    if budget is not None:
        monkeypatch.setenv("DZSR_SW_BLOCK_BYTES", budget)
    high = 2 if sign_dtype == torch.int8 else 50
    sign = torch.randint(1 - high, high, (5, 3, 50), dtype=sign_dtype)
    proj_scaled = torch.randn(3, 4, dtype=dtype)
    du = emulated.sliced_wasserstein_backward(sign, proj_scaled)
    expected = torch.stack([proj_scaled.t() @ s.to(dtype) for s in sign])
    # summation-order rounding of a 3-term dot product, bounded by the terms' magnitudes (results
    # near zero after cancellation are held to the same absolute bound as their terms)
    scale = torch.stack([proj_scaled.abs().t() @ s.abs().to(dtype) for s in sign])
    bound = 4 * proj_scaled.shape[0] * torch.finfo(dtype).eps * scale
    assert du.shape == expected.shape and du.dtype == dtype
    assert ((du - expected).abs() <= bound).all(), (du - expected).abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype, shape",
    [
        (torch.float32, (2, 16, 12, 12)),  # the training shapes' row lengths 144, 576, 2304
        (torch.float32, (2, 16, 24, 24)),
        (torch.float32, (2, 16, 48, 48)),
        (torch.float32, (1, 8, 64, 64)),  # the float32 capacity
        (torch.float32, (1, 8, 65, 63)),  # L = 4095
        (torch.float32, (1, 8, 64, 65)),  # L = 4160: fallback
        (torch.float64, (1, 8, 32, 64)),  # the float64 capacity
        (torch.float64, (1, 8, 41, 50)),  # fallback
    ],
)
def test_cuda_on_chip_and_fallback(dtype, shape):
    """The cpp backend's CUDA kernels on both sides of each capacity: the loss against the
    reference, the signs exactly against a stable sort of the same (GPU) projections on chip and
    group-wise (on CPU copies, for speed) everywhere, and the backward GEMM."""
    u = torch.randn(shape, dtype=dtype, device="cuda")
    v = torch.randn(shape, dtype=dtype, device="cuda") + 0.2
    proj = draw_projections(shape[1], shape[1] // 2, device="cuda", dtype=dtype)
    require_backend("cpp", "cuda")
    loss, sign_u, sign_v = sw_op._forward(u, v, proj, True, "cpp")
    pu, pv = projected(u, proj), projected(v, proj)  # the op's own GEMMs, bit for bit
    ref_loss = (pu.sort(dim=2).values - pv.sort(dim=2).values).abs().mean()
    torch.testing.assert_close(loss, ref_loss, rtol=RTOL[dtype], atol=0.0)
    if shape[2] * shape[3] <= ON_CHIP_CAPACITY[dtype]:
        exact_u, exact_v = stable_signs(u, v, proj)
        assert torch.equal(sign_u, exact_u) and torch.equal(sign_v, exact_v)
    ref_u, ref_v = reference_signs(pu, pv)
    assert_signs_equivalent(sign_u.cpu(), ref_u.cpu(), pu.cpu())
    assert_signs_equivalent(sign_v.cpu(), ref_v.cpu(), pv.cpu())
    du = sw_op._backward_op(sign_u, proj, "cpp")
    torch.testing.assert_close(du, proj.t() @ sign_u.to(dtype), rtol=RTOL[dtype], atol=RTOL[dtype])

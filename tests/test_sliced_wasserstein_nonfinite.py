"""Sliced-Wasserstein loss with NaN, inf, signed zeros, extreme magnitudes and empty inputs: the
reference's rules (reference.py's docstring) checked on the reference itself, then every fast
backend (``cpp`` C++ on CPU, ``triton`` under the interpreter) against the reference, forward (loss
and int8 signs) and backward (du, dv), through sliced_wasserstein_oracle's tie-invariant checks.
The CUDA forward is checked on the same cases in test_sliced_wasserstein_cuda_emulated.py."""

import pytest
import torch
from sliced_wasserstein_oracle import (
    CASES,
    INF,
    NAN,
    check_backend,
    loss_and_grads,
    nonfinite_case,
    require_backend,
)

import dzsr_kernels as dk
from dzsr_kernels.sliced_wasserstein import draw_projections, sliced_wasserstein_loss
from dzsr_kernels.sliced_wasserstein import op as sw_op

FAST_BACKENDS = ["cpp", "triton"]


def test_reference_rules():
    """The rules reference.py's docstring states, on the reference: torch.sign(NaN) = 0; a NaN
    element makes its column sort last in every direction, the loss NaN and that column's own
    gradient 0; an infinity makes the loss inf with finite gradients; inf against inf is NaN."""
    assert torch.sign(torch.tensor(NAN)).item() == 0.0
    assert torch.tensor([NAN, 1.0, -NAN]).sort().values[:1].item() == 1.0  # both NaNs sort last
    u, v, proj = nonfinite_case("u_nan", torch.float64)
    loss, (du, dv) = loss_and_grads("reference", u, v, proj)
    assert loss.isnan() and du.isfinite().all() and dv.isfinite().all()
    assert torch.count_nonzero(du.view(2, 3, 6)[0, :, 4]) == 0
    loss, (du, dv) = loss_and_grads(
        "reference", *nonfinite_case("u_inf_v_negative_inf", torch.float64)
    )
    assert loss.item() == INF and du.isfinite().all() and dv.isfinite().all()
    loss, _ = loss_and_grads("reference", *nonfinite_case("inf_against_inf", torch.float64))
    assert loss.isnan()
    loss, (du, dv) = loss_and_grads("reference", *nonfinite_case("signed_zeros", torch.float32))
    assert loss.item() == 0.0 and torch.count_nonzero(du) == 0 and torch.count_nonzero(dv) == 0


@pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning"
)  # inf - inf in the Triton interpreter
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_nonfinite_matches_reference(backend, dtype, case):
    check_backend(backend, *nonfinite_case(case, dtype))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_nonfinite_half_inputs(backend):
    """float16 features with NaN and inf compute in float32 like the reference."""
    u, v, proj = nonfinite_case("u_inf_v_negative_inf", torch.float32)
    u.view(-1)[7] = NAN
    check_backend(backend, u.half(), v.half(), proj)


EMPTY_SHAPES = [(0, 3, 2, 2), (2, 3, 0, 2), (2, 3, 2, 0), (2, 0, 2, 2), (0, 0, 0, 0)]


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("v_grad", [False, True])
def test_empty_inputs(backend, shape, v_grad):
    """N = 0 or H*W = 0: the mean of nothing, NaN; C = 0 (with N*H*W > 0): 0. The gradients are
    zeros of the inputs' shapes (empty for all of these), on every backend."""
    u, v = torch.randn(shape), torch.randn(shape)
    loss, grads = loss_and_grads(backend, u, v, draw_projections(shape[1], 2), v_grad)
    empty_mean = shape[0] * shape[2] * shape[3] == 0
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.isnan().item() if empty_mean else loss.item() == 0.0
    assert len(grads) == (2 if v_grad else 1)
    for g in grads:
        assert g.shape == shape and g.dtype == torch.float32 and g.numel() == 0


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_zero_directions_at_the_op_level(backend):
    """The public API requires C' >= 1, but the custom ops are total: C' = 0 gives a NaN loss, empty
    signs and an all-zero gradient (every element written: outputs are NaN-poisoned in the tests)."""
    u, v, proj = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), torch.empty(0, 3)
    require_backend(backend)
    loss, sign_u, sign_v = sw_op._forward(u, v, proj, True, backend)
    assert loss.isnan() and sign_u.shape == sign_v.shape == (2, 0, 4)
    du = sw_op._backward_op(sign_u, proj, backend)
    assert du.shape == (2, 3, 4) and torch.count_nonzero(du) == 0


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_empty_inputs_with_default_projections(backend):
    """No proj: C' = max(1, C // 2) directions are drawn even for C = 0 (zero rows)."""
    u = torch.randn(0, 6, 4, 4, requires_grad=True)
    with dk.use_backend(backend):
        loss = sliced_wasserstein_loss(u, torch.randn(0, 6, 4, 4))
    loss.backward()
    assert loss.isnan() and u.grad.shape == u.shape

"""Shared checks of the sliced-Wasserstein tests: a backend's loss, int8 signs and gradients against
the reference (dzsr_kernels/sliced_wasserstein/reference.py), invariant to the order of ties.

Among equal projected values (ties, several NaNs, -0.0 and +0.0) any assignment of the tied sorted
slots is a valid subgradient and backends may pick different ones; the sum of the signs over each
group of equal values is the same for all of them. So signs are compared group-wise, and gradients
directly only where no row has a tie (else through the backend's own signs, M^T sign / (N C' L)).
Non-finite values are compared exactly (equal NaN and inf masks, equal infinities), finite ones
with a relative tolerance of the compute dtype (float64 1e-10, float32 1e-4) and of the rounding to
the output dtype (float16 2e-3, bfloat16 1.6e-2).
"""

from __future__ import annotations

import torch
from cuda_emulation_build import emulated_library

import dzsr_kernels as dk
from dzsr_kernels._checks import compute_dtype
from dzsr_kernels.sliced_wasserstein import draw_projections, sliced_wasserstein_loss
from dzsr_kernels.sliced_wasserstein import op as sw_op

RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def projected(u: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """(N, C', L) projected values in the compute dtype, computed as the reference computes them."""
    dtype = compute_dtype(u)
    n, c, h, w = u.shape
    return proj.to(dtype) @ u.reshape(n, c, h * w).to(dtype)


def reference_signs(pu: torch.Tensor, pv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.sign(sort(pu) - sort(pv)) scattered back to each element's position, for u and (negated)
    for v: the reference's gradient with respect to the projected values, times N C' L."""
    su, iu = pu.sort(dim=2)
    sv, iv = pv.sort(dim=2)
    s = torch.sign(su - sv)
    return torch.zeros_like(s).scatter(2, iu, s), torch.zeros_like(s).scatter(2, iv, -s)


def stable_signs(u, v, proj) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 sign(sort(pu) - sort(pv)) at each element's unsorted position, for u and (negated) v,
    with a stable sort (ties and NaNs in input order): what the on-chip kernels must give exactly."""
    pu, pv = projected(u, proj), projected(v, proj)
    su, iu = pu.sort(dim=2, stable=True)
    sv, iv = pv.sort(dim=2, stable=True)
    s = torch.sign(su - sv).to(torch.int8)  # torch.sign(NaN) is 0
    zeros = torch.zeros_like(s)
    return zeros.scatter(2, iu, s), zeros.scatter(2, iv, -s)


def assert_same_nonfinite_and_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0
):
    """Equal shape and dtype, equal NaN masks, equal infinities, close finite values."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        actual.shape,
        expected.shape,
    )
    assert torch.equal(actual.isnan(), expected.isnan()), f"NaN masks differ:\n{actual}\n{expected}"
    inf = expected.isinf()
    assert torch.equal(actual.isinf(), inf) and torch.equal(actual[inf], expected[inf]), (
        "infinities differ"
    )
    finite = expected.isfinite()
    torch.testing.assert_close(actual[finite], expected[finite], rtol=rtol, atol=atol)


def _groups(row: torch.Tensor) -> list[list[int]]:
    """Indices of equal values of a 1-D row (all NaNs one group, -0.0 with +0.0)."""
    groups: dict[object, list[int]] = {}
    for i, x in enumerate(row.tolist()):
        groups.setdefault("nan" if x != x else x + 0.0, []).append(i)
    return list(groups.values())


def has_ties(p: torch.Tensor) -> bool:
    """Whether some row of p (..., L) holds two equal non-NaN values (NaN slots all get sign 0, so
    ties among NaNs change nothing)."""
    rows = p.reshape(-1, p.shape[-1]) if p.numel() else p.reshape(0, 0)
    for row in rows:
        finite = row[~row.isnan()]
        if finite.numel() != torch.unique(finite + 0.0).numel():
            return True
    return False


def assert_signs_equivalent(sign: torch.Tensor, expected: torch.Tensor, p: torch.Tensor) -> None:
    """int8 signs of a backend against the reference signs (float) of the projected values p: the
    same shape, values in {-1, 0, 1}, and equal sums over every group of equal values of each row."""
    assert sign.dtype == torch.int8 and sign.shape == expected.shape and sign.is_contiguous()
    assert bool(((sign >= -1) & (sign <= 1)).all()), "signs outside {-1, 0, 1}"
    if sign.numel() == 0:
        return
    length = p.shape[-1]
    s, e, rows = (
        sign.reshape(-1, length).double(),
        expected.reshape(-1, length).double(),
        p.reshape(-1, length),
    )
    for r in range(rows.shape[0]):
        for g in _groups(rows[r]):
            assert s[r, g].sum() == e[r, g].sum(), f"row {r}, tie group {g}: {s[r, g]} vs {e[r, g]}"


def grad_from_signs(sign: torch.Tensor, proj: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """M^T sign[n] / (N C' L) per sample, shaped and typed like ``like``: the gradient a sign tensor
    stands for (upstream gradient 1)."""
    m = proj.to(compute_dtype(like))
    g = m.t() @ sign.to(m.dtype) / max(sign.numel(), 1)
    return g.reshape(like.shape).to(like.dtype)


def require_backend(backend: str, device: str = "cpu") -> None:
    """Load ``backend``'s kernels (the C++ extension builds on first use), so that the custom ops can
    be called directly; raises if it cannot run here."""
    with dk.use_backend(backend):
        dk._backend.resolve(sw_op.OP, torch.device(device))


def loss_and_grads(
    backend: str, u: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, v_grad: bool = True
):
    u = u.detach().requires_grad_()
    v = v.detach().requires_grad_(v_grad)
    with dk.use_backend(backend):
        loss = sliced_wasserstein_loss(u, v, proj=proj)
    grads = torch.autograd.grad(loss, (u, v) if v_grad else (u,), allow_unused=False)
    return loss.detach(), grads


def check_forward_outputs(loss, sign_u, sign_v, u, v, proj) -> None:
    """Outputs of a custom-op forward (need_v_sign=True) against the reference."""
    pu, pv = projected(u, proj), projected(v, proj)
    ref_u, ref_v = reference_signs(pu, pv)
    ref_loss = (pu.sort(dim=2).values - pv.sort(dim=2).values).abs().mean()
    assert_same_nonfinite_and_close(loss, ref_loss.to(loss.dtype), RTOL[loss.dtype])
    assert_signs_equivalent(sign_u, ref_u, pu)
    assert_signs_equivalent(sign_v, ref_v, pv)


def check_backend(
    backend: str, u: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, v_grad: bool = True
) -> None:
    """``backend`` against the reference: the custom op's loss and signs, then the public API's loss
    and gradients (directly where no row has a tie, else as M^T of the backend's own signs)."""
    m = proj.to(compute_dtype(u))
    require_backend(backend)
    check_forward_outputs(*sw_op._forward(u, v, m, True, backend), u, v, m)
    loss, grads = loss_and_grads(backend, u, v, proj, v_grad)
    ref_loss, ref_grads = loss_and_grads("reference", u, v, proj, v_grad)
    rtol = RTOL[u.dtype]
    assert_same_nonfinite_and_close(loss, ref_loss, rtol)
    scale = (
        float(m.abs().max()) / max(1, u.shape[0] * m.shape[0] * u.shape[2] * u.shape[3])
        if m.numel()
        else 0.0
    )
    atol = RTOL[compute_dtype(u)] * scale
    pu, pv = projected(u, m), projected(v, m)
    if not (has_ties(pu) or has_ties(pv)):
        for g, r in zip(grads, ref_grads, strict=True):
            assert_same_nonfinite_and_close(g, r, rtol, atol)
        return
    _, sign_u, sign_v = sw_op._forward(u, v, m, True, backend)
    for g, s, x in zip(grads, (sign_u, sign_v), (u, v)):
        assert_same_nonfinite_and_close(g, grad_from_signs(s, m, x), rtol, atol)


NAN, INF = float("nan"), float("inf")
SCALE = {
    "huge": {torch.float32: 1e30, torch.float64: 1e300},
    "tiny": {torch.float32: 1e-30, torch.float64: 1e-300},
}


def nonfinite_case(name: str, dtype: torch.dtype):
    """(u, v, proj) of shape (2, 3, 2, 3) with C' = 2, and one kind of special value."""
    u = torch.randn(2, 3, 2, 3, dtype=dtype)
    v = torch.randn(2, 3, 2, 3, dtype=dtype) + 0.3
    proj = draw_projections(3, 2, dtype=dtype)
    fu, fv = u.view(2, 3, 6), v.view(2, 3, 6)
    if name == "u_nan":
        fu[0, 1, 4] = NAN
    elif name == "u_negative_nan":  # sign bit set, as x86 makes for inf - inf or 0 * inf
        fu[0, 1, 4] = -NAN
        fu[1, 0, 0] = -NAN
    elif name == "v_nan":
        fv[1, 0, 2] = NAN
    elif name == "u_inf_v_negative_inf":
        fu[0, 2, 1] = INF
        fv[1, 1, 5] = -INF
    elif name == "inf_against_inf":  # the same infinity lands in the same slot of u and v
        fu[0, 0, 3] = INF
        fv[0, 0, 1] = INF
    elif name == "opposite_infs_in_a_column":  # NaN where M[k, 0] M[k, 1] > 0, else an infinity
        fu[0, 0, 3], fu[0, 1, 3] = INF, -INF
    elif name == "zero_weight_times_inf":  # axis directions: 0 * inf = NaN in the other direction
        proj = torch.eye(3, dtype=dtype)[:2]
        fu[0, 2, 0] = INF
        fu[1, 0, 0] = INF
        fv[1, 1, 2] = -INF
    elif name == "all_nan":
        u.fill_(NAN)
    elif name == "signed_zeros":
        u = torch.zeros_like(u) * torch.randn_like(u).sign()
        v = torch.zeros_like(v) * torch.randn_like(v).sign()
    elif name in SCALE:
        u, v = u * SCALE[name][dtype], v * SCALE[name][dtype]
    else:
        raise ValueError(name)
    return u, v, proj


CASES = [
    "u_nan",
    "u_negative_nan",
    "v_nan",
    "u_inf_v_negative_inf",
    "inf_against_inf",
    "opposite_infs_in_a_column",
    "zero_weight_times_inf",
    "all_nan",
    "signed_zeros",
    "huge",
    "tiny",
]


LAYOUTS = ["contiguous", "transposed", "channels_last"]


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x's values with the given memory layout (the last two for x of C, H, W > 1 not contiguous)."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x.contiguous()


def emulated_cuda_ops():
    """The CUDA forward and backward of csrc/sliced_wasserstein/sliced_wasserstein_cuda.cu built for
    CPU threads, as torch.ops.dzsr_sw_cuda_emu.sliced_wasserstein_{forward,backward}."""
    return emulated_library("dzsr_sw_cuda_emu", "sliced_wasserstein_emulated.cpp")

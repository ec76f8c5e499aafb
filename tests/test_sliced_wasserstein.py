"""Sliced-Wasserstein loss: the ``cpp`` backend against the PyTorch reference (forward and gradients),
the reference against the formula, validation, determinism and the custom-op registration.

Tolerances: float64 1e-12 relative; float32 1e-5 relative on the loss and 1e-6 of the gradient scale
on gradients; float16/bfloat16 compute in float32 in both backends, so the loss is compared after the
cast to the input dtype (one rounding apart at most) and the gradients after their cast.
Ties: among tied sorted values any assignment of the tied slots is a valid subgradient, so tests with
ties compare the loss and the gradient summed over each tied group (see test_ties_*).
"""

import numpy as np
import pytest
import torch

import dzsr_kernels as dk
from dzsr_kernels.sliced_wasserstein import draw_projections, sliced_wasserstein_loss
from dzsr_kernels.sliced_wasserstein import op as sw_op
from dzsr_kernels.sliced_wasserstein.reference import sliced_wasserstein

BACKEND = "cpp"
SHAPES = [(2, 5, 3, 7), (1, 3, 11, 13), (3, 8, 4, 4), (2, 1, 5, 5)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _proj(channels, num_proj, dtype=torch.float32):
    return draw_projections(
        channels, num_proj, dtype=torch.float64 if dtype == torch.float64 else torch.float32
    )


def _loss_and_grads(backend, u, v, proj):
    u = u.detach().requires_grad_()
    v = v.detach().requires_grad_(v.requires_grad)
    with dk.use_backend(backend):
        loss = sliced_wasserstein_loss(u, v, proj=proj)
    inputs = (u, v) if v.requires_grad else (u,)
    grads = torch.autograd.grad(loss, inputs)
    return loss.detach(), grads


def _tolerances(dtype, scale):
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12 * scale)
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-6 * scale)
    eps = torch.finfo(dtype).eps
    return dict(rtol=eps, atol=eps * scale)


def _features(shape, dtype, shift=0.0):
    """Random features; for half dtypes, distinct values per (n, c) plane (multiples of 1/32, exact in
    bfloat16), so that rounding the inputs creates no ties (with C=1 a tie survives projection)."""
    if dtype.is_floating_point and torch.finfo(dtype).bits == 16:
        n, c, h, w = shape
        planes = torch.stack([torch.randperm(256)[: h * w] for _ in range(n * c)])
        return (planes.float() / 32 - 4 + shift).view(shape).to(dtype)
    return (torch.randn(shape) + shift).to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v_grad", [False, True])
def test_matches_reference(shape, dtype, v_grad):
    u = _features(shape, dtype)
    v = _features(shape, dtype, shift=0.3).requires_grad_(v_grad)
    proj = _proj(shape[1], max(1, shape[1] // 2), dtype)
    loss, grads = _loss_and_grads(BACKEND, u, v, proj)
    ref_loss, ref_grads = _loss_and_grads("reference", u, v, proj)
    assert loss.dtype == dtype and loss.shape == ()
    tol = _tolerances(dtype, 1.0)
    torch.testing.assert_close(loss, ref_loss, **tol)
    scale = 1.0 / (shape[0] * proj.shape[0] * shape[2] * shape[3])  # size of one gradient entry
    assert len(grads) == len(ref_grads) == (2 if v_grad else 1)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype and g.shape == shape
        torch.testing.assert_close(g, r, **_tolerances(dtype, scale))


def test_reference_matches_formula():
    """The oracle against a direct numpy transcription of docs/design.md#sliced-wasserstein."""
    u, v = (
        torch.randn(2, 4, 3, 5, dtype=torch.float64),
        torch.randn(2, 4, 3, 5, dtype=torch.float64),
    )
    proj = _proj(4, 3, torch.float64)
    un, vn, m = u.numpy().reshape(2, 4, -1), v.numpy().reshape(2, 4, -1), proj.numpy()
    total = 0.0
    for n in range(2):
        for k in range(3):
            total += np.abs(np.sort(m[k] @ un[n]) - np.sort(m[k] @ vn[n])).sum()
    expected = total / (2 * 3 * 15)
    assert abs(sliced_wasserstein(u, v, proj).item() - expected) < 1e-12


def test_non_contiguous_inputs():
    u = torch.randn(2, 6, 9, 5).transpose(2, 3)  # (2, 6, 5, 9), non-contiguous
    v = (
        torch.randn(2, 5, 9, 6).permute(0, 3, 2, 1).requires_grad_()
    )  # (2, 6, 9, 5) -> transposed view
    v = v.transpose(2, 3)
    assert not u.is_contiguous() and not v.is_contiguous() and u.shape == v.shape
    proj = _proj(6, 3)
    loss, grads = _loss_and_grads(BACKEND, u, v, proj)
    ref_loss, ref_grads = _loss_and_grads("reference", u, v, proj)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("n", [1, 3])
def test_several_direction_blocks(monkeypatch, n):
    """A tiny block size forces the kernels through several GEMM blocks per sample (forward) and
    several column chunks (backward), in both schedules (fewer samples than threads, or more)."""
    monkeypatch.setenv("DZSR_SW_BLOCK_BYTES", "128")  # 1-2 directions of L=7 doubles per block
    u = torch.randn(n, 9, 1, 7, dtype=torch.float64)
    v = torch.randn(n, 9, 1, 7, dtype=torch.float64, requires_grad=True)
    proj = _proj(9, 5, torch.float64)
    loss, grads = _loss_and_grads(BACKEND, u, v, proj)
    ref_loss, ref_grads = _loss_and_grads("reference", u, v, proj)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)


def test_ties_within_u_give_a_valid_subgradient():
    """Duplicate pixels tie in every direction: the loss and the gradient summed over each tied pair
    match the reference; every other pixel's gradient matches exactly."""
    u = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    flat = u.view(2, 4, 12)
    flat[:, :, 5] = flat[:, :, 1]
    flat[:, :, 9] = flat[:, :, 1]  # a triple
    flat[:, :, 7] = flat[:, :, 2]
    v = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    v.view(2, 4, 12)[:, :, 3] = v.view(2, 4, 12)[:, :, 0]
    v.requires_grad_()
    proj = _proj(4, 2, torch.float64)
    loss, (gu, gv) = _loss_and_grads(BACKEND, u, v, proj)
    ref_loss, (ru, rv) = _loss_and_grads("reference", u, v, proj)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for g, r, groups in ((gu, ru, [[1, 5, 9], [2, 7]]), (gv, rv, [[0, 3]])):
        g, r = g.reshape(2, 4, 12), r.reshape(2, 4, 12)
        tied = sorted(i for grp in groups for i in grp)
        free = [i for i in range(12) if i not in tied]
        torch.testing.assert_close(g[:, :, free], r[:, :, free], rtol=1e-12, atol=1e-15)
        for grp in groups:
            torch.testing.assert_close(
                g[:, :, grp].sum(2), r[:, :, grp].sum(2), rtol=1e-12, atol=1e-15
            )


def test_equal_inputs_give_zero_loss_and_zero_gradient():
    """|a - b| at a - b = 0 has subgradient 0 (torch's sign(0) = 0), in every backend."""
    u = torch.randn(2, 6, 5, 3)
    for backend in (BACKEND, "reference"):
        loss, (gu, gv) = _loss_and_grads(backend, u, u.clone().requires_grad_(), _proj(6, 3))
        assert loss.item() == 0.0
        assert torch.count_nonzero(gu) == 0 and torch.count_nonzero(gv) == 0


def test_gradcheck_float64():
    proj = _proj(3, 2, torch.float64)
    u = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    with dk.use_backend(BACKEND):
        assert torch.autograd.gradcheck(
            lambda a, b: sliced_wasserstein_loss(a, b, proj=proj), (u, v), eps=1e-7
        )


@pytest.mark.parametrize("need_v_sign", [False, True])
def test_opcheck(need_v_sign):
    u, v = (
        torch.randn(2, 5, 3, 3, requires_grad=True),
        torch.randn(2, 5, 3, 3, requires_grad=need_v_sign),
    )
    proj = _proj(5, 2)
    torch.library.opcheck(sw_op._forward, (u, v, proj, need_v_sign, BACKEND))
    sign = torch.randint(-1, 2, (2, 2, 9), dtype=torch.int8)
    torch.library.opcheck(sw_op._backward_op, (sign, proj * 0.1, BACKEND))


def test_signs_are_scattered_to_unsorted_positions():
    """The forward's int8 output is sign(sorted difference) at each element's own position."""
    u, v = (
        torch.randn(1, 2, 1, 6, dtype=torch.float64),
        torch.randn(1, 2, 1, 6, dtype=torch.float64),
    )
    proj = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    loss, sign_u, sign_v = sw_op._forward(u, v, proj, True, BACKEND)
    a, b = (proj @ u.view(2, 6))[0], (proj @ v.view(2, 6))[0]
    sa, ia = a.sort()
    sb, ib = b.sort()
    expected_u = torch.zeros(6, dtype=torch.int8)
    expected_u[ia] = torch.sign(sa - sb).to(torch.int8)
    expected_v = torch.zeros(6, dtype=torch.int8)
    expected_v[ib] = -torch.sign(sa - sb).to(torch.int8)
    assert torch.equal(sign_u.view(6), expected_u) and torch.equal(sign_v.view(6), expected_v)
    assert abs(loss.item() - (sa - sb).abs().mean().item()) < 1e-12


def test_same_generator_same_loss():
    u, v = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    with dk.use_backend(BACKEND):
        a = sliced_wasserstein_loss(u, v, generator=torch.Generator().manual_seed(7))
        b = sliced_wasserstein_loss(u, v, generator=torch.Generator().manual_seed(7))
        c = sliced_wasserstein_loss(u, v, generator=torch.Generator().manual_seed(8))
        d = sliced_wasserstein_loss(u, v, num_proj=3, generator=torch.Generator().manual_seed(7))
    assert a.item() == b.item() and a.item() != c.item()
    expected = sliced_wasserstein(u, v, draw_projections(8, 3, torch.Generator().manual_seed(7)))
    torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-6)


def test_default_projection_is_fresh_and_unit_norm():
    g = torch.Generator().manual_seed(3)
    m = draw_projections(10, 5, g)
    assert m.shape == (5, 10)
    torch.testing.assert_close(m.norm(dim=1), torch.ones(5))
    u, v = torch.randn(1, 10, 4, 4), torch.randn(1, 10, 4, 4)
    with dk.use_backend(BACKEND):
        assert sliced_wasserstein_loss(u, v).item() != sliced_wasserstein_loss(u, v).item()


NAN, INF = float("nan"), float("inf")
_EYE2 = torch.eye(4)[:2]

# (id, arguments replacing the valid ones, exception, message): every one a distinct mistake; the
# message names the argument and what was expected.
BAD_INPUTS = [
    (
        "u_numpy",
        dict(u=np.zeros((2, 4, 3, 3))),
        TypeError,
        r"u must be a torch.Tensor of shape \(N, C, H, W\)",
    ),
    ("v_list", dict(v=[[0.0]]), TypeError, "v must be a torch.Tensor"),
    (
        "u_3_dims",
        dict(u=torch.randn(4, 3, 3)),
        ValueError,
        r"u must have shape \(N, C, H, W\) \(4 dims\)",
    ),
    (
        "v_5_dims",
        dict(v=torch.randn(2, 4, 3, 3, 1)),
        ValueError,
        r"v must have shape \(N, C, H, W\) \(4 dims\)",
    ),
    (
        "u_int",
        dict(u=torch.ones(2, 4, 3, 3, dtype=torch.int32)),
        TypeError,
        "u must be a floating tensor",
    ),
    (
        "v_bool",
        dict(v=torch.ones(2, 4, 3, 3, dtype=torch.bool)),
        TypeError,
        "v must be a floating tensor",
    ),
    (
        "u_complex",
        dict(u=torch.randn(2, 4, 3, 3, dtype=torch.complex64)),
        TypeError,
        "u must be a floating tensor",
    ),
    ("u_sparse", dict(u=torch.randn(2, 4, 3, 3).to_sparse()), TypeError, "u must be a dense"),
    ("v_other_size", dict(v=torch.randn(2, 4, 3, 4)), ValueError, "v must have the shape of u"),
    ("v_other_channels", dict(v=torch.randn(2, 5, 3, 3)), ValueError, "v must have the shape of u"),
    (
        "mixed_dtypes",
        dict(v=torch.randn(2, 4, 3, 3, dtype=torch.float64)),
        TypeError,
        "u and v must share one dtype",
    ),
    (
        "v_other_device",
        dict(v=torch.randn(2, 4, 3, 3, device="meta")),
        ValueError,
        "all tensors must be on one device",
    ),
    ("proj_list", dict(proj=[[1.0, 0.0, 0.0, 0.0]]), TypeError, "proj must be a torch.Tensor"),
    (
        "proj_1_dim",
        dict(proj=torch.randn(4)),
        ValueError,
        r"proj must have shape \(C', C=4\) \(2 dims\)",
    ),
    (
        "proj_other_channels",
        dict(proj=torch.eye(5)[:2]),
        ValueError,
        r"proj must have shape \(C', C=4\) with size 4",
    ),
    ("proj_no_rows", dict(proj=torch.empty(0, 4)), ValueError, "proj must have at least one row"),
    (
        "proj_int",
        dict(proj=torch.eye(4, dtype=torch.int64)),
        TypeError,
        "proj must be a floating tensor",
    ),
    ("proj_sparse", dict(proj=_EYE2.to_sparse()), TypeError, "proj must be a dense"),
    (
        "proj_nan",
        dict(proj=torch.tensor([[NAN, 0.0, 0.0, 1.0]])),
        ValueError,
        "proj must be finite",
    ),
    (
        "proj_inf",
        dict(proj=torch.tensor([[INF, 0.0, 0.0, 0.0]])),
        ValueError,
        "proj must be finite",
    ),
    ("proj_not_unit", dict(proj=_EYE2 * 1.1), ValueError, "proj rows must have unit L2 norm"),
    (
        "proj_other_device",
        dict(proj=torch.empty(2, 4, device="meta")),
        ValueError,
        "proj must be on the device of u",
    ),
    (
        "proj_and_generator",
        dict(proj=_EYE2, generator=torch.Generator()),
        ValueError,
        "give proj or generator",
    ),
    ("num_proj_disagrees", dict(proj=_EYE2, num_proj=3), ValueError, "num_proj=3 disagrees"),
    ("num_proj_zero", dict(num_proj=0), ValueError, "num_proj must be a positive int"),
    ("num_proj_negative", dict(num_proj=-2), ValueError, "num_proj must be a positive int"),
    (
        "num_proj_float",
        dict(num_proj=2.0),
        TypeError,
        "num_proj must be a positive int or None, got float",
    ),
    (
        "num_proj_bool",
        dict(num_proj=True),
        TypeError,
        "num_proj must be a positive int or None, got bool",
    ),
    (
        "num_proj_str_with_proj",
        dict(proj=_EYE2, num_proj="2"),
        TypeError,
        "num_proj must be a positive int or None",
    ),
    ("generator_int", dict(generator=7), TypeError, "generator must be a torch.Generator"),
]


@pytest.mark.parametrize("case, bad, error, match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs(case, bad, error, match):
    """Each mistake raises one clear error (TypeError for a type or dtype, ValueError for a shape,
    device or value) naming the argument, before any backend runs."""
    args = {"u": torch.randn(2, 4, 3, 3), "v": torch.randn(2, 4, 3, 3), **bad}
    with dk.use_backend(BACKEND), pytest.raises(error, match=match):
        sliced_wasserstein_loss(**args)


def test_valid_edge_arguments_are_accepted():
    """The counterparts of the bad inputs that are valid: unit rows up to float32 rounding, a float64
    proj for float32 features, C = 0 with a (C', 0) proj (R^0 has no unit vectors)."""
    u, v = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    with dk.use_backend(BACKEND):
        sliced_wasserstein_loss(u, v, proj=_proj(4, 2))
        sliced_wasserstein_loss(u, v, proj=_proj(4, 2, torch.float64))
        loss = sliced_wasserstein_loss(
            torch.randn(2, 0, 3, 3), torch.randn(2, 0, 3, 3), proj=torch.empty(3, 0)
        )
    assert loss.item() == 0.0


def test_v_without_grad_gets_none_and_no_v_signs():
    u = torch.randn(1, 4, 3, 3, requires_grad=True)
    v = torch.randn(1, 4, 3, 3)
    _, _, sign_v = sw_op._forward(u.detach(), v, _proj(4, 2), False, BACKEND)
    assert sign_v.numel() == 0
    with dk.use_backend(BACKEND):
        sliced_wasserstein_loss(u, v).backward()
    assert v.grad is None and u.grad is not None and torch.count_nonzero(u.grad) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("v_grad", [False, True])
def test_cuda_matches_reference(dtype, v_grad):
    """The CUDA forward (and the shared ATen backward) of the cpp backend, on a GPU."""
    shape = (3, 9, 13, 11)
    u = _features(shape, dtype).cuda()
    v = _features(shape, dtype, shift=0.3).cuda().requires_grad_(v_grad)
    proj = _proj(9, 4, dtype).cuda()
    loss, grads = _loss_and_grads(BACKEND, u, v, proj)
    ref_loss, ref_grads = _loss_and_grads("reference", u, v, proj)
    torch.testing.assert_close(loss, ref_loss, **_tolerances(dtype, 1.0))
    scale = 1.0 / (shape[0] * 4 * shape[2] * shape[3])
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **_tolerances(dtype, scale))

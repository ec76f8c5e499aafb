"""Shared checks of the local sliced-Wasserstein tests: the kernel's documented outputs (the loss
and the int32 per-pixel sign sums, dzsr_kernels/local_sliced_wasserstein/op.py) computed
independently of unfold, by gathering each window's projected values by pixel index.

The oracle sorts stably, as the kernel does (ties in a window's row-major order), so the counts
compare exactly even with ties, NaN and infinities; the public API's gradients must equal
M^T counts / (N P C' k^2) and be finite, and its loss must equal the reference's (equal NaN / inf,
finite values within the compute dtype's tolerance, sliced_wasserstein_oracle.RTOL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sliced_wasserstein_oracle import RTOL, assert_same_nonfinite_and_close

import dzsr_kernels as dk
from dzsr_kernels._checks import compute_dtype
from dzsr_kernels.local_sliced_wasserstein import local_sliced_wasserstein_loss
from dzsr_kernels.local_sliced_wasserstein import op as losw_op
from dzsr_kernels.local_sliced_wasserstein.reference import window_count


def pairs(shape, num_proj: int, window: int, stride: int) -> int:
    """N P C' k^2: the number of compared pairs, the loss's denominator."""
    n, _, h, w = shape
    windows = window_count(h, window, stride) * window_count(w, window, stride)
    return n * windows * num_proj * window * window


def oracle(u, v, proj, window: int, stride: int):
    """(loss, count_u, count_v) of the kernel's forward: each window's projected values gathered by
    pixel index and sorted stably, |differences| averaged, signs summed at their pixels."""
    dtype = compute_dtype(u)
    n, c, h, w = u.shape
    m = proj.to(dtype)
    pixels = torch.arange(h * w, dtype=torch.float64, device=u.device).view(1, 1, h, w)
    index = F.unfold(pixels, window, stride=stride)[0].t().long()  # (P, k*k), row-major windows

    def sorted_windows(x):
        projected = m @ x.reshape(n, c, h * w).to(dtype)  # (N, C', L)
        return projected[:, :, index].sort(dim=3, stable=True)  # (N, C', P, k*k)

    def sum_at_pixels(order, signs):  # order: each sorted slot's position in its window
        pixel = index.expand(order.shape).gather(3, order)
        count = torch.zeros(n, m.shape[0], h * w, dtype=dtype, device=u.device)
        return count.scatter_add_(2, pixel.flatten(2), signs.flatten(2)).to(torch.int32)

    (su, iu), (sv, iv) = sorted_windows(u), sorted_windows(v)
    sign = torch.sign(su - sv)
    return (su - sv).abs().mean(), sum_at_pixels(iu, sign), sum_at_pixels(iv, -sign)


def check_forward(forward, u, v, proj, window: int, stride: int) -> None:
    """A kernel's forward ``forward(u, v, m, window, stride, need_v_count) -> (loss, count_u,
    count_v)`` (the op's documented outputs) against the oracle, with need_v_count True and False:
    the counts exactly, the loss within the compute dtype's tolerance (same NaN / inf)."""
    m = proj.to(compute_dtype(u))
    loss, count_u, count_v = forward(u, v, m, window, stride, True)
    ref_loss, ref_u, ref_v = oracle(u, v, m, window, stride)
    assert count_u.dtype == torch.int32 and count_u.is_contiguous()
    assert torch.equal(count_u, ref_u) and torch.equal(count_v, ref_v)
    assert loss.shape == () and loss.dtype == m.dtype
    assert_same_nonfinite_and_close(loss, ref_loss, RTOL[m.dtype])
    loss_u, count_u_only, no_v = forward(u, v, m, window, stride, False)
    assert no_v.shape == (0,) and torch.equal(count_u_only, count_u)
    assert torch.equal(loss_u, loss) or (loss_u.isnan() and loss.isnan())


def loss_and_grads(backend, u, v, proj, window, stride, v_grad=None):
    """The 0-dim loss and the gradients of u (and of v when ``v_grad``, by default when v
    requires grad) of ``backend``'s public API."""
    v_grad = v.requires_grad if v_grad is None else v_grad
    u = u.detach().requires_grad_()
    v = v.detach().requires_grad_(v_grad)
    with dk.use_backend(backend):
        loss = local_sliced_wasserstein_loss(u, v, window, stride, proj=proj)
    grads = torch.autograd.grad(loss, (u, v) if v_grad else (u,))
    return loss.detach(), grads


def check_backend(backend, u, v, proj, window, stride, v_grad=True) -> None:
    """``backend``'s custom-op counts against the oracle (exactly), its public loss against the
    reference, its gradients against M^T counts / (N P C' k^2)."""
    m = proj.to(compute_dtype(u))
    with dk.use_backend(backend):
        dk._backend.resolve(losw_op.OP, u.device)  # builds the extension outside the checks
    _, count_u, count_v = losw_op._forward(u, v, m, window, stride, True, backend)
    _, ref_u, ref_v = oracle(u, v, m, window, stride)
    assert count_u.dtype == torch.int32 and count_u.is_contiguous()
    assert torch.equal(count_u, ref_u) and torch.equal(count_v, ref_v)
    loss, grads = loss_and_grads(backend, u, v, proj, window, stride, v_grad)
    ref_loss, _ = loss_and_grads("reference", u, v, proj, window, stride, v_grad)
    assert_same_nonfinite_and_close(loss, ref_loss, RTOL[u.dtype])
    scale = pairs(u.shape, m.shape[0], window, stride)
    for g, count, x in zip(grads, (count_u, count_v), (u, v)):
        assert g.shape == x.shape and g.dtype == x.dtype and bool(g.isfinite().all())
        expected = (m.t() @ count.to(m.dtype) / max(scale, 1)).view(x.shape).to(x.dtype)
        rtol = RTOL[x.dtype]
        atol = rtol * float(m.abs().max()) / max(scale, 1) if m.numel() else 0.0
        torch.testing.assert_close(g, expected, rtol=rtol, atol=atol)

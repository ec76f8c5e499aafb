"""Pure-PyTorch local sliced-Wasserstein (LOSW) loss, SelfDZSR++'s formulation (the oracle).

Conventions (docs/design.md#local-sliced-wasserstein). Features u, v (N, C, H, W); a square
window of k x k pixels slides over the map with ``stride`` s and no padding, so there are
P = ((H - k) // s + 1) * ((W - k) // s + 1) windows, in row-major order, and the pixels a window
does not reach (the last rows or columns when the windows don't tile the map) take no part.
Each window is a cloud of k*k points in R^C. Projections M (C', C) have unit-norm rows, one set
shared by every sample and window. For sample n, window p and direction j the k*k projected values
of u and of v are sorted ascending (each window separately) and compared elementwise:

    loss = mean over (n, p, j, i) of | sort((M u_np)[j])_i - sort((M v_np)[j])_i |

computed as the authors do: ``F.unfold`` materialises every window (k*k copies of each pixel per
covering window), a batched matmul projects them, ``torch.sort`` sorts the (N, P, C', k*k) rows.
Half inputs are computed in float32 and float64 stays float64; the loss has the dtype of u.

Gradient: torch's autograd of ``sort`` and ``abs``: a pixel's projected value receives
sign(a_(i) - b_(i)) / (N P C' k^2) from every window that holds it (slot i being where it sorted
in that window), summed over those windows; the negative for v; then M^T back to the channels.

Non-finite values follow the global loss (dzsr_kernels/sliced_wasserstein/reference.py) window by
window: NaN (whatever its sign bit) sorts last, -0.0 equals +0.0, a NaN sorted difference (a NaN
on either side, or equal infinities) makes the loss NaN and gets torch's sign(NaN) = 0, an
infinite one makes it inf with a finite +-1 gradient; the gradients are always finite. Ties
(equal values in one window) may be assigned to the tied slots in any order.
Empty inputs: N = 0 gives the mean of nothing, a NaN loss, and empty gradients; C = 0 projects
every point to 0: a zero loss (NaN if also N = 0) and empty gradients. The window must fit the map
(1 <= k <= min(H, W)), so H and W are at least 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import compute_dtype


def window_count(size: int, window: int, stride: int) -> int:
    """Window positions along one axis of ``size`` pixels (no padding): (size - k) // s + 1."""
    return (size - window) // stride + 1


def _sorted_window_projections(x, m, window: int, stride: int) -> torch.Tensor:
    """(N, P, C', k*k): each window's projected values sorted, for x (N, C, H, W) in m's dtype."""
    n, c, h, w = x.shape
    windows = window_count(h, window, stride) * window_count(w, window, stride)
    # Each channel plane unfolded as a batch of its own, so that C = 0 (an empty batch) works too.
    cols = F.unfold(x.reshape(n * c, 1, h, w), window, stride=stride)  # (N*C, k*k, P)
    cols = cols.view(n, c, window * window, windows).permute(0, 3, 1, 2).contiguous()
    return (m @ cols).sort(dim=3).values


def local_sliced_wasserstein(
    u: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, window: int, stride: int
) -> torch.Tensor:
    """The LOSW loss of u and v (N, C, H, W) under ``proj`` (C', C); a 0-dim tensor of u's dtype."""
    dtype = compute_dtype(u, v)
    m = proj.to(dtype)
    su = _sorted_window_projections(u.to(dtype), m, window, stride)
    sv = _sorted_window_projections(v.to(dtype), m, window, stride)
    return (su - sv).abs().mean().to(u.dtype)

"""Pure-PyTorch sliced-Wasserstein (SW) loss (the oracle) and the default projection draw.

Conventions (docs/design.md#sliced-wasserstein). Features u, v (N, C, H, W) are read as N point
clouds of L = H*W points in R^C. Projections M (C', C) have unit-norm rows. For sample n and
direction k the L projected values (M u_n)[k] and (M v_n)[k] are sorted ascending and compared
elementwise:

    loss = mean over (n, k, i) of | sort((M u_n)[k])_i - sort((M v_n)[k])_i |

Half inputs are computed in float32 and float64 stays float64; the loss has the dtype of u.
The gradient flows through the sort permutation: torch's autograd of ``sort`` and ``abs`` is the
reference subgradient, d loss / d a_(i) = sign(a_(i) - b_(i)) / (N C' L) at the element of
(M u_n)[k] sorted into slot i (the negative for v), then M^T back to the channels.

Non-finite values (what this implementation gives, and every backend must give):
  * Projection: a NaN in u (or v) at (n, c, l) makes column l of (M u_n) NaN in every direction
    (NaN * m is NaN even for m = 0). A +-inf there gives +-inf * M[k, c] in direction k: an
    infinity signed by M[k, c], or NaN where M[k, c] = 0 or where the column holds infinities whose
    products have opposite signs.
  * Sort (``torch.sort``): ascending, every NaN last whatever its sign bit, -0.0 equal to +0.0;
    the order of equal values (ties, several NaNs) is unspecified.
  * Loss: NaN if any sorted difference a_(i) - b_(i) is NaN (a NaN on either side of slot i, or
    +inf against +inf, -inf against -inf); otherwise +inf if any difference is infinite; otherwise
    finite. Magnitudes whose mean itself overflows are outside the compared domain (the fused
    kernels accumulate in float64, the reference in the compute dtype).
  * Gradient: torch's sign has sign(0) = 0 and sign(NaN) = 0, so a slot whose difference is NaN
    contributes 0 to du and dv, and an infinite difference contributes +-1 like a finite one. M is
    finite (the public API rejects a non-finite proj) and so du, dv are always finite: NaN and inf
    inputs change which slots count, never make a gradient NaN.
Empty inputs: N = 0 or H*W = 0 give the mean of nothing, a NaN loss, and zero gradients of the
inputs' (empty) shapes. C = 0 (points in R^0) projects every point to 0: the loss is 0 (NaN if also
N*H*W = 0) and the gradients are empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import compute_dtype


def default_num_proj(channels: int) -> int:
    """C' = C // 2 directions (the authors' choice), at least one."""
    return max(1, channels // 2)


def draw_projections(
    channels: int,
    num_proj: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(num_proj, channels) directions drawn from N(0, I) and normalised to unit L2 norm.

    With ``generator`` the draw happens on the generator's device (reproducible) and is moved to
    ``device``; without it the global RNG of ``device`` is used.
    """
    draw_device = generator.device if generator is not None else torch.device(device)
    m = torch.randn((num_proj, channels), generator=generator, device=draw_device, dtype=dtype)
    return F.normalize(m, dim=1).to(device)


def sliced_wasserstein(u: torch.Tensor, v: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """The SW loss of u and v (N, C, H, W) under projections ``proj`` (C', C); a 0-dim tensor."""
    dtype = compute_dtype(u, v)
    n, c, h, w = u.shape
    m = proj.to(dtype)
    pu = m @ u.reshape(n, c, h * w).to(dtype)  # (N, C', L); an explicit L, as N or C may be 0
    pv = m @ v.reshape(n, c, h * w).to(dtype)
    return (pu.sort(dim=2).values - pv.sort(dim=2).values).abs().mean().to(u.dtype)

"""Pure-PyTorch sliced-Wasserstein (SW) loss (the oracle) and the default projection draw.

Conventions (SPEC §1c). Features u, v (N, C, H, W) are read as N point clouds of L = H*W points in
R^C. Projections M (C', C) have unit-norm rows. For sample n and direction k the L projected values
(M u_n)[k] and (M v_n)[k] are sorted ascending and compared elementwise:

    loss = mean over (n, k, i) of | sort((M u_n)[k])_i - sort((M v_n)[k])_i |

Half inputs are computed in float32 and float64 stays float64; the loss has the dtype of u.
The gradient flows through the sort permutation: torch's autograd of ``sort`` and ``abs``
(with sign(0) = 0) is the reference subgradient.
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
    n, c = u.shape[:2]
    m = proj.to(dtype)
    pu = m @ u.reshape(n, c, -1).to(dtype)  # (N, C', L)
    pv = m @ v.reshape(n, c, -1).to(dtype)
    return (pu.sort(dim=2).values - pv.sort(dim=2).values).abs().mean().to(u.dtype)

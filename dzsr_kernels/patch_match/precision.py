"""The two precisions of patch matching (docs/design.md#patch-match) and the numbers of ``fast``.

``exact``: float32 products and sums, the results of the reference's float32 definition up to the
summation order (every backend). ``fast`` (Triton backend): split TF32 on the tensor cores. Each
normalised pixel value x is split into two TF32 values (round to nearest, ties away from zero, 10
stored mantissa bits), hi = tf32(x) and lo = tf32(x - hi), and a product x y is computed as
hi_x hi_y + hi_x lo_y + lo_x hi_y: three TF32 tensor-core products (each exact in float32, 11 + 11
significant bits) with float32 accumulation; the patch norms (``inv_q``, ``inv_r``) stay float32.
Plain TF32 (one product) and bfloat16 were measured too, on the CPU with their rounding applied in
torch (``python -m benchmarks.bench_patch_match --agreement``): on the bundled samples' real
features they return the exact index for 99.75% and 98.57% of the query patches, below the 99.9%
the fast path must keep; split TF32 returns it for all of them.

``fast_score_error_bound`` is the proven bound on ``|score_fast - score_exact|`` for one pair of
patches, hence for the top-1 scores (the max of values each within the bound moves by at most it).
For patch vectors a, b of n = p²C entries (|P_q| |P_r| their norms), with u = 2^-11 (TF32) and
e = 2^-24 (float32):
  * splitting: x = hi + l exactly with |l| <= u|x|, lo = l + d with |d| <= u|l| <= u²|x|, so
    x y - (hi_x hi_y + hi_x lo_y + lo_x hi_y) = l_x l_y - hi_x d_y - d_x hi_y, at most
    (3u² + 2u³)|x||y|; summed, (3u² + 2u³)|P_q||P_r| (Cauchy-Schwarz);
  * accumulation: a float32 sum of m terms is within gamma(m) sum |t_i| of the exact sum,
    gamma(m) = m e' / (1 - m e'), e' = e for round-to-nearest additions (the exact path, m = n)
    and, to allow tensor cores that truncate while accumulating, e' = 2e for the fast path
    (m = 3n terms, whose magnitudes sum to at most (1 + u)² (1 + 2u(1 + u)) |P_q||P_r|);
  * scaling by inv_q inv_r = 1/(|P_q||P_r|): the cosine's error is the sum of the two above divided
    by |P_q||P_r|, plus the float32 roundings of the two products by the inverse norms in each
    path, on a cosine of magnitude at most 1 (8 e in all, with room for the inverse norms' error).
For C = 256, p = 3 (the model's matching) the bound is 9.6e-4, nearly all of it the worst case of
float32 accumulation; measured differences are below 1e-6 (BENCHMARKS.md).
"""

from __future__ import annotations

import torch

PRECISIONS = ("exact", "fast")
# Names accepted before "exact"/"fast" existed, kept as aliases (public API since issue 3).
ALIASES = {"float32": "exact", "tf32": "fast"}
TF32_UNIT_ROUNDOFF = 2.0**-11
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def canonical(precision: str) -> str:
    """``precision`` with its alias resolved ("float32" -> "exact", "tf32" -> "fast")."""
    return ALIASES.get(precision, precision)


def round_to_tf32_(u: torch.Tensor) -> torch.Tensor:
    """Round a finite float32 tensor in place to TF32 (round to nearest, ties away from zero, the
    low 13 mantissa bits cleared; the Triton kernel's ``_round_tf32``) and return it. Values stay
    float32; |u| <= 1e12 here (normalised pixels), far from overflow."""
    bits = u.view(torch.int32)
    bits.add_(1 << 12).bitwise_and_(~((1 << 13) - 1))
    return u


def split_tf32(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``u`` -> new tensors (hi, lo) of TF32 values, hi = tf32(u), lo = tf32(u - hi)."""
    hi = round_to_tf32_(u.clone())
    return hi, round_to_tf32_(u - hi)


def _gamma(m: int, e: float) -> float:
    return m * e / (1 - m * e)


def fast_score_error_bound(channels: int, patch_size: int) -> float:
    """Proven bound on |score_fast - score_exact| for C = ``channels`` and p = ``patch_size``
    (module docstring derives it)."""
    n, u, e = patch_size * patch_size * channels, TF32_UNIT_ROUNDOFF, FLOAT32_UNIT_ROUNDOFF
    splitting = 3 * u * u + 2 * u**3
    magnitudes = (1 + u) ** 2 * (1 + 2 * u * (1 + u))
    accumulation = _gamma(3 * n, 2 * e) * magnitudes + _gamma(n, e)
    return splitting + accumulation + 8 * e

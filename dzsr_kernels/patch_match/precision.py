"""The two precisions of patch matching (docs/design.md#patch-match) and the numbers of ``fast``.

``exact``: float32 products and sums, the results of the reference's float32 definition up to the
summation order (every backend). ``fast`` (Triton backend): the normalised pixel vectors are
rounded to TF32 (round to nearest, ties away from zero, 10 stored mantissa bits; the tensor cores'
float32 input format) and multiplied on the tensor cores with float32 accumulation; the patch norms
(``inv_q``, ``inv_r``) stay float32. TF32 rather than bfloat16: its rounding error is 8x smaller
(unit roundoff 2^-11 against 2^-8), which the index agreement needs (``benchmarks.bench_patch_match
--agreement`` measures both), and the operands stay float32 in memory.

``fast_score_error_bound`` is the proven bound on ``|score_fast - score_exact|`` for one pair of
patches, hence for the top-1 scores (the max of values each within the bound moves by at most it).
For patch vectors a, b of n = p²C entries (|P_q| |P_r| their norms), with u = 2^-11:
  * rounding: |sum a'b' - sum ab| <= sum |a'b' - ab| <= (2u + u²) sum |a||b| <= (2u + u²) |P_q||P_r|
    (Cauchy-Schwarz); the products of TF32 values are exact in float32 (11 + 11 significant bits);
  * accumulation: a float32 sum of n terms is within gamma(n) sum |x_i| of the exact sum,
    gamma(n) = n e / (1 - n e), e = 2^-24 for round-to-nearest additions (the exact path) and, to
    allow tensor cores that truncate while accumulating, e = 2^-23 for the fast path; sum |a'b'| <=
    (1 + u)² |P_q||P_r|;
  * scaling by inv_q inv_r = 1/(|P_q||P_r|): the cosine's error is the sum of the two above divided
    by |P_q||P_r|, plus the float32 roundings of the two inverse norms and two products, 4 e each
    path on a cosine of magnitude at most 1 (8 e in all).
For C = 256, p = 3 (the model's matching) the bound is 1.39e-3; measured errors are far smaller
(BENCHMARKS.md), because rounding errors have random signs.
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
    low 13 mantissa bits cleared) and return it. Values stay float32; |u| <= 1e12 here (normalised
    pixels), far from overflow."""
    bits = u.view(torch.int32)
    bits.add_(1 << 12).bitwise_and_(~((1 << 13) - 1))
    return u


def _gamma(n: int, e: float) -> float:
    return n * e / (1 - n * e)


def fast_score_error_bound(channels: int, patch_size: int) -> float:
    """Proven bound on |score_fast - score_exact| for C = ``channels`` and p = ``patch_size``
    (module docstring derives it)."""
    n, u, e = patch_size * patch_size * channels, TF32_UNIT_ROUNDOFF, FLOAT32_UNIT_ROUNDOFF
    rounding = 2 * u + u * u
    accumulation = (_gamma(n, 2 * e) + _gamma(n, e)) * (1 + u) ** 2
    return rounding + accumulation + 8 * e

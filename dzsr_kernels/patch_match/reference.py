"""Patch-correlation matching, pure PyTorch (the oracle), and the code every backend shares around its
kernel: the preprocessing (``prepare``) and the non-finite rule (``match_prepared``).

Semantics (docs/design.md#patch-match). For query (N,C,Hq,Wq) and ref (N,C,Hr,Wr) and patch size p (odd), C >= 1:
  * every pixel's C-vector x is L2-normalised, ``u = x / max(||x||, 1e-12)`` (``F.normalize``'s rule,
    as the authors do): an all-zero pixel stays the zero vector. Where the direct norm would overflow,
    ||x|| is computed as m * ||x / m|| with m = max_c |x_c|, so huge (e.g. 1e30 in float32) and tiny
    finite values neither overflow nor underflow the norm; it is computed in the input's precision
    (float32 at least) and only then cast to the compute dtype, identically for every backend. (A
    pixel with ||x|| < 1e-12 keeps the short vector x / 1e-12; where that is so short that its
    squares underflow the compute dtype, ||x|| below about 1e-31 in float32 or 1e-166 in float64,
    patches made of such pixels lose precision and, all squares underflowing, count as zero patches:
    the compute dtype's limit.)
  * a pixel with any non-finite channel (NaN, +Inf or -Inf) normalises to the all-NaN vector;
  * a patch is the p*p normalised pixel vectors concatenated; patch (y, x) has its top-left pixel at
    (y, x); there are (H-p+1)x(W-p+1) patches per map, flattened row-major;
  * score(q, r) = <P_q, P_r> / (|P_q| |P_r|), the cosine of the two pC-dim patch vectors, where
    |P| is the norm of the normalised patch, sqrt(sum of the p*p pixel norms squared) (3 for p=3
    unless pixels are zero). A finite patch whose norm is 0 (all its pixels zero) has score 0
    against every finite patch. A patch containing a non-finite pixel scores NaN against every
    patch of the other map (whether that one is finite, zero or not);
  * top-1 per query patch with ``torch.max`` semantics over its row of scores: NaN is the largest
    value. So, per sample: a query patch containing a non-finite pixel gets score NaN and index 0
    (all its candidates are NaN); otherwise, if any reference patch of the sample contains a
    non-finite pixel, the query patch gets score NaN and the smallest such reference index;
    otherwise the maximum score, ties to the smallest index. ``index`` always lies in
    [0, (Hr-p+1)(Wr-p+1)).
  * N = 0 gives empty (0, Hq-p+1, Wq-p+1) outputs; C = 0 and maps smaller than the patch (H or W
    below p, 0 included) are errors (``op.patch_match`` says which argument).
Outputs: score float32, index int64, both contiguous (N, Hq-p+1, Wq-p+1) on every backend.

Every kernel computes, on finite inputs, per query patch q, ``val(r) = <P_q, P_r> * inv_r[r]``,
keeps the best val and the smallest r reaching it (ties to the smallest index), and returns
``score = best * inv_q[q]`` with ``inv = 1/|P|`` (0 for zero patches). ``prepare`` builds the shared
inputs of that formula (NaN marking the non-finite pixels and patches); ``match_prepared`` zeroes the
NaNs for the kernel and then applies the non-finite rule above to its result, so no kernel ever sees
a non-finite value and the rule lives in this one place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12
# Reference-backend chunk: at most this many float elements of correlation in flight.
CHUNK_ELEMENTS = 1 << 24

Kernel = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _may_branch() -> bool:
    """Whether a shortcut may test data on the host: in eager mode, not while torch.compile traces
    (a data-dependent branch would break the graph; the general path gives the same result)."""
    return not torch.compiler.is_compiling()


def pixel_major_copy(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N,C,H,W) -> a new contiguous (N,H,W,C) tensor in ``dtype``. Channels-last inputs are copied as
    they lie; otherwise each sample is one 2-D (C, H*W) transpose, which torch copies about 4x faster
    than the 4-D permutation (0.9 vs 3.8 ms for 256x64x64 float32 on one CPU thread)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1)
    if rows.is_contiguous() or n * c * h * w == 0:
        return rows.to(dtype, memory_format=torch.contiguous_format, copy=True)
    u = torch.empty((n, h, w, c), dtype=dtype, device=x.device)
    for i in range(n):
        u[i].view(h * w, c).copy_(x[i].reshape(c, h * w).to(dtype).t())
    return u


def normalise_pixels(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N,C,H,W), C >= 1 -> pixel-major (N,H,W,C) contiguous in ``dtype``: each pixel's C-vector divided
    by max(||x||, 1e-12) (a zero pixel stays zero), in x's precision (at least float32); pixels with a
    non-finite channel all-NaN. The norm is first computed directly; only if that overflows somewhere or
    a channel is non-finite is it recomputed as m * ||x / m|| (m = max |x_c|). (Underflow of the direct
    norm is harmless: it only happens to norms far below 1e-12, which divide by 1e-12 either way.)
    One buffer (plus the cast for float64 inputs of a float32 computation), normalised in place."""
    u = pixel_major_copy(x, torch.promote_types(x.dtype, dtype))
    norm = torch.linalg.vector_norm(u, dim=3, keepdim=True)
    if _may_branch() and bool(norm.isfinite().all()):  # no overflow, no non-finite channel
        return u.mul_(torch.where(norm >= NORM_EPS, norm.reciprocal(), 1 / NORM_EPS)).to(dtype)
    m = torch.maximum(
        u.amax(dim=3, keepdim=True), u.amin(dim=3, keepdim=True).neg_()
    )  # NaN/Inf if non-finite
    finite = m.isfinite()
    scale = torch.where(finite & (m > 0), m, torch.ones_like(m))
    s = torch.linalg.vector_norm(
        u.div_(scale), dim=3, keepdim=True
    )  # ||x|| / scale, in [1, sqrt(C)] or 0
    factor = torch.where(s * scale >= NORM_EPS, s.reciprocal(), scale / NORM_EPS)
    return u.mul_(factor.masked_fill_(~finite, float("nan"))).to(dtype)


def inverse_patch_norms(u: torch.Tensor, p: int) -> torch.Tensor:
    """Normalised pixels u (N,H,W,C) -> 1/|P| per patch (N, H-p+1, W-p+1): 0 where |P| = 0, NaN for a
    patch containing a NaN pixel."""
    sq = torch.linalg.vector_norm(u, dim=3).square_().unsqueeze(1)
    norm = F.avg_pool2d(sq, p, stride=1, divisor_override=1).squeeze(1).sqrt_()
    return torch.where(norm == 0, torch.zeros_like(norm), norm.reciprocal())


def prepare(query: torch.Tensor, ref: torch.Tensor, p: int, dtype: torch.dtype):
    """Inputs of every kernel: pixel-major normalised maps uq (N,Hq,Wq,C), ur (N,Hr,Wr,C), contiguous
    in ``dtype``, and the inverse patch norms inv_q (N,Hq-p+1,Wq-p+1), inv_r (N,Hr-p+1,Wr-p+1); NaN
    marks the non-finite pixels and the patches containing them. Extra memory: one copy of each map."""
    uq, ur = normalise_pixels(query, dtype), normalise_pixels(ref, dtype)
    return uq, ur, inverse_patch_norms(uq, p), inverse_patch_norms(ur, p)


def conv_match(
    uq: torch.Tensor, ur: torch.Tensor, inv_q: torch.Tensor, inv_r: torch.Tensor, p: int
):
    """The reference kernel: chunked conv2d matching (C2-Matching style, the reference patches as filters)
    on finite prepared inputs (see ``match_prepared``). Memory is bounded by ``CHUNK_ELEMENTS``
    correlation values plus one chunk of filters. Returns (score float32, index int64), each
    contiguous (N, Hq-p+1, Wq-p+1)."""
    n, hq, wq, c = uq.shape
    hpq, wpq = hq - p + 1, wq - p + 1
    n_ref = inv_r.shape[1] * inv_r.shape[2]
    chunk = max(1, CHUNK_ELEMENTS // (hpq * wpq))
    score = uq.new_empty((n, hpq, wpq), dtype=torch.float32)
    index = uq.new_empty((n, hpq, wpq), dtype=torch.int64)
    for b in range(n):
        q_img = uq[b].permute(2, 0, 1).unsqueeze(0)
        ref_patches = ur[b].permute(2, 0, 1).unfold(1, p, 1).unfold(2, p, 1)  # (C, Hpr, Wpr, p, p)
        ref_patches = ref_patches.reshape(c, n_ref, p, p)
        inv_r_flat = inv_r[b].reshape(n_ref)
        best = idx = None
        for start in range(0, n_ref, chunk):
            # channels-last filters, like the pixel-major query: the convolution's fastest layout
            # on oneDNN (1.45x at 64x64x256 against NCHW filters on the 2-core CPU machine)
            filters = ref_patches[:, start : start + chunk].permute(1, 0, 2, 3)
            filters = filters.contiguous(memory_format=torch.channels_last)
            val = F.conv2d(q_img, filters)[0] * inv_r_flat[start : start + chunk].view(-1, 1, 1)
            val_max, val_arg = val.max(dim=0)  # first maximum on ties
            if best is None:
                best, idx = val_max, val_arg
            else:
                better = val_max > best
                best = torch.where(better, val_max, best)
                idx = torch.where(better, val_arg + start, idx)
        score[b] = best * inv_q[b]
        index[b] = idx
    return score, index


def apply_non_finite_rule(
    score: torch.Tensor, index: torch.Tensor, bad_q: torch.Tensor, bad_r: torch.Tensor
):
    """The top-1 rule for patches containing non-finite pixels (module docstring) applied to a kernel's
    (score, index) (N,Hpq,Wpq), score in place; bad_q (N,Hpq,Wpq) and bad_r (N,Hpr,Wpr) mask those patches."""
    bad_r = bad_r.flatten(1)
    any_r = bad_r.any(dim=1).view(-1, 1, 1)
    first_r = (
        bad_r.to(torch.uint8).argmax(dim=1).view(-1, 1, 1)
    )  # smallest bad reference index (argmax: first)
    score.masked_fill_(bad_q | any_r, float("nan"))
    return score, torch.where(any_r, first_r, index).masked_fill_(bad_q, 0)


def match_prepared(
    uq: torch.Tensor,
    ur: torch.Tensor,
    inv_q: torch.Tensor,
    inv_r: torch.Tensor,
    p: int,
    kernel: Kernel = conv_match,
):
    """Top-1 matching on ``prepare``'s outputs with ``kernel(uq, ur, inv_q, inv_r, p) -> (score, index)``:
    the kernel gets finite inputs (the NaNs of uq and ur are zeroed in place, those of inv_q and inv_r in
    copies), then ``apply_non_finite_rule`` sets the NaN results. Returns (score float32, index int64),
    each contiguous (N, Hq-p+1, Wq-p+1)."""
    bad_q, bad_r = inv_q.isnan(), inv_r.isnan()
    if _may_branch() and not (
        bool(bad_q.any()) or bool(bad_r.any())
    ):  # no NaN patch: no NaN at all
        return kernel(uq, ur, inv_q, inv_r, p)
    score, index = kernel(
        uq.nan_to_num_(0.0), ur.nan_to_num_(0.0), inv_q.nan_to_num(0.0), inv_r.nan_to_num(0.0), p
    )
    return apply_non_finite_rule(score, index, bad_q, bad_r)


def patch_match(
    query: torch.Tensor, ref: torch.Tensor, p: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference top-1 patch matching; float64 inputs are computed in float64, others in float32."""
    dtype = torch.float64 if torch.float64 in (query.dtype, ref.dtype) else torch.float32
    return match_prepared(*prepare(query, ref, p, dtype), p)

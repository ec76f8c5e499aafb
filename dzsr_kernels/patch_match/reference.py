"""Patch-correlation matching, pure PyTorch (the oracle), and the preprocessing every backend shares.

Semantics (SPEC §1b). For query (N,C,Hq,Wq) and ref (N,C,Hr,Wr) and patch size p (odd):
  * every pixel's C-vector is L2-normalised, ``u = x / max(||x||, 1e-12)`` (``F.normalize``, as the
    authors do): an all-zero pixel stays the zero vector, so no NaN appears;
  * a patch is the p*p normalised pixel vectors concatenated; patch (y, x) has its top-left pixel at
    (y, x); there are (H-p+1)x(W-p+1) patches per map, flattened row-major;
  * score(q, r) = <P_q, P_r> / (|P_q| |P_r|), the cosine of the two pC-dim patch vectors, where
    |P| is the norm of the normalised patch, sqrt(sum of the p*p pixel norms squared) (3 for p=3
    unless pixels are zero). A patch whose norm is 0 (all its pixels zero) has score 0 against
    everything.

Every backend computes, per query patch q, ``val(r) = <P_q, P_r> * inv_r[r]``, keeps the best val
and the smallest r reaching it (ties to the smallest index), and returns ``score = best * inv_q[q]``
with ``inv = 1/|P|`` (0 for zero patches). ``prepare`` builds the shared inputs of that formula.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12
# Reference-backend chunk: at most this many float elements of correlation in flight.
CHUNK_ELEMENTS = 1 << 24


def normalise_pixels(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N,C,H,W) -> pixel-major (N,H,W,C) contiguous copy in ``dtype``, each pixel's C-vector divided by
    max(||x||, 1e-12) (``F.normalize``'s rule: a zero pixel stays zero). One buffer, normalised in place."""
    u = x.permute(0, 2, 3, 1).to(dtype, memory_format=torch.contiguous_format, copy=True)
    return u.div_(torch.linalg.vector_norm(u, dim=3, keepdim=True).clamp_min_(NORM_EPS))


def inverse_patch_norms(u: torch.Tensor, p: int) -> torch.Tensor:
    """Normalised pixels u (N,H,W,C) -> 1/|P| per patch (N, H-p+1, W-p+1), 0 where |P| = 0."""
    sq = torch.linalg.vector_norm(u, dim=3).square_().unsqueeze(1)
    norm = F.avg_pool2d(sq, p, stride=1, divisor_override=1).squeeze(1).sqrt_()
    return torch.where(norm > 0, norm.reciprocal(), torch.zeros_like(norm))


def prepare(query: torch.Tensor, ref: torch.Tensor, p: int, dtype: torch.dtype):
    """Inputs of every kernel: pixel-major normalised maps uq (N,Hq,Wq,C), ur (N,Hr,Wr,C), contiguous
    in ``dtype``, and the inverse patch norms inv_q (N,Hq-p+1,Wq-p+1), inv_r (N,Hr-p+1,Wr-p+1).
    Extra memory: one copy of each map."""
    uq, ur = normalise_pixels(query, dtype), normalise_pixels(ref, dtype)
    return uq, ur, inverse_patch_norms(uq, p), inverse_patch_norms(ur, p)


def match_prepared(uq: torch.Tensor, ur: torch.Tensor, inv_q: torch.Tensor, inv_r: torch.Tensor, p: int):
    """Chunked conv2d matching (C2-Matching style, the reference patches as filters) on prepared inputs.

    uq (N,Hq,Wq,C), ur (N,Hr,Wr,C), inv_q, inv_r as from ``prepare``. Memory is bounded by
    ``CHUNK_ELEMENTS`` correlation values plus one chunk of filters. Returns (score float32, index int64),
    each (N, Hq-p+1, Wq-p+1).
    """
    n, hq, wq, c = uq.shape
    hpq, wpq = hq - p + 1, wq - p + 1
    n_ref = inv_r.shape[1] * inv_r.shape[2]
    chunk = max(1, CHUNK_ELEMENTS // (hpq * wpq))
    scores, indices = [], []
    for b in range(n):
        q_img = uq[b].permute(2, 0, 1).unsqueeze(0)
        ref_patches = ur[b].permute(2, 0, 1).unfold(1, p, 1).unfold(2, p, 1)  # (C, Hpr, Wpr, p, p)
        ref_patches = ref_patches.reshape(c, n_ref, p, p)
        inv_r_flat = inv_r[b].reshape(n_ref)
        best = idx = None
        for start in range(0, n_ref, chunk):
            filters = ref_patches[:, start : start + chunk].permute(1, 0, 2, 3)
            val = F.conv2d(q_img, filters)[0] * inv_r_flat[start : start + chunk].view(-1, 1, 1)
            val_max, val_arg = val.max(dim=0)  # first maximum on ties
            if best is None:
                best, idx = val_max, val_arg
            else:
                better = val_max > best
                best = torch.where(better, val_max, best)
                idx = torch.where(better, val_arg + start, idx)
        scores.append((best * inv_q[b]).float())
        indices.append(idx)
    return torch.stack(scores), torch.stack(indices)


def patch_match(query: torch.Tensor, ref: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference top-1 patch matching; float64 inputs are computed in float64, others in float32."""
    dtype = torch.float64 if torch.float64 in (query.dtype, ref.dtype) else torch.float32
    return match_prepared(*prepare(query, ref, p, dtype), p)

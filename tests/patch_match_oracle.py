"""Independent float64 brute force for the patch-match tests: every patch vector built explicitly."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import dzsr_kernels

SCORE_TOL = 2e-5


def patch_vectors(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N,C,H,W) -> (N, (H-p+1)(W-p+1), p*p*C) float64 patches of the pixel-normalised map."""
    u = x.double()
    norm = u.norm(dim=1, keepdim=True)
    u = torch.where(norm > 0, u / norm.clamp_min(1e-300), torch.zeros_like(u))
    patches = u.unfold(2, p, 1).unfold(3, p, 1)  # N, C, Hp, Wp, p, p
    n, c, hp, wp = patches.shape[:4]
    return patches.permute(0, 2, 3, 4, 5, 1).reshape(n, hp * wp, p * p * c)


def cosine_matrix(query: torch.Tensor, ref: torch.Tensor, p: int = 3) -> torch.Tensor:
    """(N, Nq, Nr) float64 cosine of every query patch with every reference patch (0 for zero patches)."""
    pq, pr = patch_vectors(query, p), patch_vectors(ref, p)
    nq, nr = pq.norm(dim=2), pr.norm(dim=2)
    denom = nq[:, :, None] * nr[:, None, :]
    dots = torch.einsum("nqd,nrd->nqr", pq, pr)
    return torch.where(denom > 0, dots / denom.clamp_min(1e-300), torch.zeros_like(dots))


def check_match(score, index, query, ref, p=3, tol=SCORE_TOL):
    """Scores within ``tol`` of the brute force; the index is the brute-force argmax wherever the best
    beats the runner-up by more than ``tol``, and elsewhere an index whose true score is within ``tol``."""
    n, hq, wq = query.shape[0], query.shape[2] - p + 1, query.shape[3] - p + 1
    assert score.shape == (n, hq, wq) and index.shape == (n, hq, wq)
    assert score.dtype == torch.float32 and index.dtype == torch.int64
    cos = cosine_matrix(query.cpu(), ref.cpu(), p)
    top = cos.topk(min(2, cos.shape[2]), dim=2).values
    best = top[..., 0]
    s, i = score.reshape(n, -1).double().cpu(), index.reshape(n, -1).cpu()
    torch.testing.assert_close(s, best, atol=tol, rtol=0)
    assert int(i.min()) >= 0 and int(i.max()) < cos.shape[2]
    clear = (top[..., 0] - top[..., 1] > tol) if cos.shape[2] > 1 else torch.ones_like(best, dtype=torch.bool)
    assert torch.equal(i[clear], cos.argmax(2)[clear]), "index differs where the best match is clear"
    assert (cos.gather(2, i.unsqueeze(2)).squeeze(2) >= best - tol).all(), "index of a near-tie scores too low"


def run(backend: str, query, ref, p=3, **kw):
    with dzsr_kernels.use_backend(backend):
        return dzsr_kernels.patch_match(query, ref, p, **kw)


def one_hot_map(n, c, h, w, zero_fraction=0.0):
    """Pixels that are exact one-hot vectors (optionally some all-zero): every score is exact, so ties
    are exact ties in every backend."""
    k = torch.randint(0, c, (n, h, w))
    x = F.one_hot(k, c).permute(0, 3, 1, 2).float()
    if zero_fraction:
        x = x * (torch.rand(n, 1, h, w) >= zero_fraction)
    return x


def first_max_index(query, ref, p=3):
    """Brute-force argmax with ties to the smallest index (exact on one-hot maps)."""
    cos = cosine_matrix(query, ref, p)
    best = cos.max(2, keepdim=True).values
    hits = (cos == best).double() * torch.arange(cos.shape[2], 0, -1, dtype=torch.float64)
    return hits.argmax(2)

"""Independent float64 brute force for the patch-match tests: every patch vector built explicitly, NaN
propagating through plain float64 arithmetic, and the torch.max top-1 rule written out; plus the
input cases and the fake / compile checks every backend's tests share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from cuda_emulation_build import emulated_library

import dzsr_kernels

SCORE_TOL = 2e-5
NORM_EPS = 1e-12  # F.normalize's floor on the pixel norm


def patch_vectors(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N,C,H,W) -> (N, (H-p+1)(W-p+1), p*p*C) float64 patches of the pixel-normalised map: each pixel
    x / max(||x||, 1e-12), the norm scaled by max |x_c| so that huge and tiny values stay exact; a pixel
    with a non-finite channel becomes all NaN."""
    u = x.double()
    m = u.abs().amax(dim=1, keepdim=True)
    unit = u / torch.where(m > 0, m, torch.ones_like(m))  # entries in [-1, 1] for finite pixels
    norm_unit = unit.norm(dim=1, keepdim=True)
    u = torch.where(m * norm_unit >= NORM_EPS, unit / norm_unit, u / NORM_EPS)
    u = torch.where(torch.isfinite(x).all(dim=1, keepdim=True), u, torch.full_like(u, float("nan")))
    patches = u.unfold(2, p, 1).unfold(3, p, 1)  # N, C, Hp, Wp, p, p
    n, c, hp, wp = patches.shape[:4]
    return patches.permute(0, 2, 3, 4, 5, 1).reshape(n, hp * wp, p * p * c)


def cosine_matrix(query: torch.Tensor, ref: torch.Tensor, p: int = 3) -> torch.Tensor:
    """(N, Nq, Nr) float64 cosine of every query patch with every reference patch (0 for zero patches,
    NaN wherever either patch holds a NaN pixel: NaN propagates through the dot and the norms)."""
    pq, pr = patch_vectors(query, p), patch_vectors(ref, p)
    nq, nr = pq.norm(dim=2), pr.norm(dim=2)
    denom = nq[:, :, None] * nr[:, None, :]
    dots = torch.einsum("nqd,nrd->nqr", pq, pr)
    return torch.where(denom == 0, torch.zeros_like(dots), dots / denom)


def check_match(score, index, query, ref, p=3, tol=SCORE_TOL):
    """Shapes, dtypes and contiguity; NaN exactly where a query patch's row of cosines holds a NaN, with
    the index of its first NaN there (torch.max semantics, written out); elsewhere scores within ``tol``
    of the brute force, the index the brute-force argmax wherever the best beats the runner-up by more
    than ``tol``, and elsewhere an index whose true score is within ``tol``."""
    n, hq, wq = query.shape[0], query.shape[2] - p + 1, query.shape[3] - p + 1
    assert score.shape == (n, hq, wq) and index.shape == (n, hq, wq)
    assert score.dtype == torch.float32 and index.dtype == torch.int64
    assert score.is_contiguous() and index.is_contiguous()
    cos = cosine_matrix(query.cpu(), ref.cpu(), p)
    s, i = score.reshape(n, hq * wq).double().cpu(), index.reshape(n, hq * wq).cpu()
    assert ((i >= 0) & (i < cos.shape[2])).all(), "index out of range"
    nan = cos.isnan()
    row_nan = nan.any(dim=2)
    assert torch.equal(s.isnan(), row_nan), "NaN scores differ from the rows holding a NaN"
    first_nan = nan.to(torch.uint8).argmax(dim=2)
    assert torch.equal(i[row_nan], first_nan[row_nan]), "index of a NaN row is not its first NaN"
    cos, s, i = cos[~row_nan], s[~row_nan], i[~row_nan]  # (rows, Nr) of finite scores
    if cos.numel() == 0:
        return
    top = cos.topk(min(2, cos.shape[1]), dim=1).values
    best = top[:, 0]
    torch.testing.assert_close(s, best, atol=tol, rtol=0)
    clear = (
        (top[:, 0] - top[:, 1] > tol)
        if cos.shape[1] > 1
        else torch.ones_like(best, dtype=torch.bool)
    )
    assert torch.equal(i[clear], cos.argmax(1)[clear]), (
        "index differs where the best match is clear"
    )
    assert (cos.gather(1, i.unsqueeze(1)).squeeze(1) >= best - tol).all(), (
        "index of a near-tie scores too low"
    )


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


def _set(x, sample, channel, y, xx, value):
    x[sample, channel, y, xx] = value
    return x


# Non-finite, extreme and empty inputs, each a function (query, ref) -> (query, ref) editing random maps
# of shape (2, C, Hq, Wq) and (2, C, Hr, Wr), Hq, Wq, Hr, Wr >= 5, for the per-backend tests.
NON_FINITE_CASES = {
    "nan_in_query": lambda q, r: (_set(q, 0, 1, 2, 3, float("nan")), r),
    "inf_in_query": lambda q, r: (
        _set(q, 1, 0, 0, 0, float("inf")),
        r,
    ),  # a corner pixel: one patch
    "neg_inf_in_ref": lambda q, r: (q, _set(r, 1, 2, 3, 4, float("-inf"))),
    "nan_in_ref_corner": lambda q, r: (
        q,
        _set(r, 0, 0, r.shape[2] - 1, r.shape[3] - 1, float("nan")),
    ),
    "nan_in_both": lambda q, r: (
        _set(q, 0, 0, 4, 1, float("nan")),
        _set(r, 0, 1, 1, 1, float("nan")),
    ),
    "inf_and_nan_in_one_pixel": lambda q, r: (
        _set(_set(q, 1, 0, 2, 2, float("inf")), 1, 1, 2, 2, float("nan")),
        r,
    ),
    "all_nan_query": lambda q, r: (torch.full_like(q, float("nan")), r),
    "nan_next_to_zero_patch": lambda q, r: (
        _set(q.index_fill(2, torch.tensor([0, 1, 2]), 0), 0, 0, 3, 0, float("nan")),
        r,
    ),
    "huge": lambda q, r: (q * 1e30, r * 3e37),  # squares overflow float32
    "tiny": lambda q, r: (q * 1e-20, r * 1e-25),  # squares underflow float32; norms < 1e-12
    "huge_tiny_zero_mix": lambda q, r: (
        q * torch.logspace(-25, 30, q.shape[3]),
        r.index_fill(3, torch.tensor([1]), 0),
    ),
    "empty_batch": lambda q, r: (q[:0], r[:0]),
}


def non_finite_case(name, c=5, dtype=torch.float32, device="cpu", hq=7, wq=8, hr=6, wr=9):
    """The inputs of NON_FINITE_CASES[name] in ``dtype`` on ``device`` (values set in float32 first)."""
    query, ref = NON_FINITE_CASES[name](torch.randn(2, c, hq, wq), torch.randn(2, c, hr, wr))
    return query.to(device, dtype), ref.to(device, dtype)


# Input layouts for the fake, opcheck and compile checks (kernel outputs are always contiguous).
LAYOUTS = {
    "contiguous": lambda t: t,
    "non_contiguous": lambda t: torch.cat([t, t], dim=3)[:, :, :, ::2],
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "transposed_hw": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
    "expanded_channels": lambda t: t[:, :1].expand(-1, t.shape[1], -1, -1),
    "empty_batch": lambda t: t[:0].contiguous(memory_format=torch.channels_last),
}


def layout_inputs(layout, device="cpu", nan=True):
    """query (2,5,6,8), ref (2,5,7,5) in the given layout, with a NaN pixel in the query if ``nan``
    (opcheck compares outputs without equal_nan, so it gets finite inputs)."""
    query, ref = torch.randn(2, 5, 6, 8, device=device), torch.randn(2, 5, 7, 5, device=device)
    if nan:
        query[0, :, 1, 2] = float("nan")
    return LAYOUTS[layout](query), LAYOUTS[layout](ref)


def fake_outputs(args):
    """The fake of torch.ops.dzsr.patch_match on FakeTensor copies of the tensor args (same strides)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return torch.ops.dzsr.patch_match.default(*fake_args)


def assert_fake_equals_real(args):
    real, fake = torch.ops.dzsr.patch_match.default(*args), fake_outputs(args)
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype, r.device) == (f.shape, f.stride(), f.dtype, f.device)
        assert r.is_contiguous()


def check_compile_fullgraph(backend, device="cpu"):
    """torch.compile(fullgraph=True) of the public op on contiguous, non-contiguous and channels-last
    inputs: the same outputs as eager (NaN included), one graph each (the fake's layout is right)."""
    compiled = torch.compile(lambda q, r: dzsr_kernels.patch_match(q, r), fullgraph=True)
    with dzsr_kernels.use_backend(backend):
        for layout in ("contiguous", "non_contiguous", "channels_last"):
            query, ref = layout_inputs(layout, device)
            (score, index), (s_eager, i_eager) = (
                compiled(query, ref),
                dzsr_kernels.patch_match(query, ref),
            )
            assert torch.equal(index, i_eager)
            torch.testing.assert_close(score, s_eager, atol=1e-6, rtol=0, equal_nan=True)
            assert score.stride() == s_eager.stride() and index.stride() == i_eager.stride()


def emulated_cuda_kernel():
    """The CUDA kernel and host code of csrc/patch_match/patch_match_cuda.cu built for CPU threads,
    as torch.ops.dzsr_pm_cuda_emu.patch_match."""
    return emulated_library("dzsr_pm_cuda_emu", "patch_match_emulated.cpp").patch_match

"""``triton`` backend of patch matching (GPU; CPU only under TRITON_INTERPRET=1).

One program owns BLOCK_Q query patches of one sample and streams over the reference patches in
blocks of BLOCK_R with a running max/argmax, so memory is O(Nq + Nr). The BLOCK_Q x BLOCK_R block
of patch dot products is accumulated as p² shifted pixel GEMMs over C (``tl.dot`` on gathered pixel
rows of the pixel-major maps); val = dot * inv_r, the block maximum and its first index are merged
into the running best (blocks are visited in increasing index order, so a strict > keeps ties on
the smallest index). ``precision="float32"`` uses IEEE float32 products, ``"tf32"`` TF32 tensor cores.
Inputs are finite (``reference.match_prepared`` zeroes the non-finite pixels and applies the
non-finite rule afterwards); outputs are contiguous (N,Hpq,Wpq) float32 / int64, empty for N = 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import new_output

BLOCK_Q = 64
BLOCK_R = 64
BLOCK_C = 32


@triton.jit
def _match_kernel(
    uq_ptr,
    ur_ptr,
    inv_q_ptr,
    inv_r_ptr,
    score_ptr,
    index_ptr,
    C,
    q_stride,
    r_stride,
    Wq,
    Wr,
    wpq,
    wpr,
    nq,
    nr,
    P: tl.constexpr,
    TF32: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = q < nq
    q_pix = (q // wpq) * Wq + q % wpq  # top-left pixel of each query patch
    uq_base = uq_ptr + n * q_stride
    ur_base = ur_ptr + n * r_stride
    cs = tl.arange(0, BLOCK_C)
    best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_Q,), tl.int64)
    for r0 in range(0, nr, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < nr
        r_pix = (r // wpr) * Wr + r % wpr
        acc = tl.zeros((BLOCK_Q, BLOCK_R), tl.float32)
        for d in tl.static_range(P * P):
            qrow = (q_pix + (d // P) * Wq + d % P).to(tl.int64) * C
            rrow = (r_pix + (d // P) * Wr + d % P).to(tl.int64) * C
            for c0 in range(0, C, BLOCK_C):
                c_ok = c0 + cs < C
                a = tl.load(
                    uq_base + qrow[:, None] + c0 + cs[None, :],
                    mask=q_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )
                b = tl.load(
                    ur_base + rrow[None, :] + c0 + cs[:, None],
                    mask=r_ok[None, :] & c_ok[:, None],
                    other=0.0,
                )
                if TF32:
                    acc = tl.dot(a, b, acc, input_precision="tf32")
                else:
                    acc = tl.dot(a, b, acc, input_precision="ieee")
        inv_r = tl.load(inv_r_ptr + n * nr + r, mask=r_ok, other=0.0)
        val = tl.where(r_ok[None, :], acc * inv_r[None, :], float("-inf"))
        blk_max = tl.max(val, axis=1)
        blk_idx = tl.min(tl.where(val == blk_max[:, None], r[None, :], nr), axis=1).to(tl.int64)
        better = blk_max > best
        best = tl.where(better, blk_max, best)
        best_idx = tl.where(better, blk_idx, best_idx)
    inv_q = tl.load(inv_q_ptr + n * nq + q, mask=q_ok, other=0.0)
    tl.store(score_ptr + n * nq + q, best * inv_q, mask=q_ok)
    tl.store(index_ptr + n * nq + q, best_idx, mask=q_ok)


def match(uq, ur, inv_q, inv_r, p, precision):
    """(score float32, index int64), each contiguous (N,Hpq,Wpq), from uq (N,Hq,Wq,C), ur
    (N,Hr,Wr,C), inv_q (N,Hpq,Wpq) and inv_r (N,Hpr,Wpr) (kernel interface in ``op``); ``precision``
    "float32" or "tf32"."""
    n, hpq, wpq = inv_q.shape
    _, hpr, wpr = inv_r.shape
    c = uq.shape[3]
    score = new_output((n, hpq, wpq), torch.float32, uq.device)
    index = new_output((n, hpq, wpq), torch.int64, uq.device)
    if n == 0:  # empty batch: no programs to launch
        return score, index
    grid = (triton.cdiv(hpq * wpq, BLOCK_Q), n)
    _match_kernel[grid](
        uq,
        ur,
        inv_q.contiguous(),
        inv_r.contiguous(),
        score,
        index,
        c,
        uq[0].numel(),
        ur[0].numel(),
        uq.shape[2],
        ur.shape[2],
        wpq,
        wpr,
        hpq * wpq,
        hpr * wpr,
        P=p,
        TF32=precision == "tf32",
        BLOCK_Q=BLOCK_Q,
        BLOCK_R=BLOCK_R,
        BLOCK_C=BLOCK_C,
    )
    return score, index

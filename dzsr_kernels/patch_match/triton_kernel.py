"""``triton`` backend of patch matching (GPU; CPU only under TRITON_INTERPRET=1).

Shift-decomposed like the C++/CUDA kernels, on the tensor cores: a patch dot product is the sum of
the p² dot products of its pixels, <P_q, P_r> = sum_(dy,dx) S[q + (dy,dx), r + (dy,dx)], where
S[a, b] = <uq[a], ur[b]> is the pixel-similarity matrix. One program owns a QY x QX query pixel tile
of one sample and streams over the RY x RX reference pixel tiles with a running max/argmax per
query patch, so memory is O(Nq + Nr) and no score matrix leaves the chip. Per pair of tiles:
  1. S (QY·QX, RY·RX) = ``tl.dot`` over the channels, float32 accumulation: IEEE float32
     products for ``exact``; for ``fast`` three TF32 tensor-core dots of the split operands
     (``_split_tf32``: hi·hi + hi·lo + lo·hi, the contract in ``precision``);
  2. the patch sums, read off S flattened: in the 4-D (qy, qx, ry, rx) view a shift (dy, dx) of
     both patches is a constant offset of the flat index, so p - 1 ``tl.gather``s sum the shifts in
     x and p - 1 more those in y (2(p - 1) gathers, not p² dots: S has QY·QX·RY·RX pixel pairs for
     (QY-p+1)(QX-p+1)(RY-p+1)(RX-p+1) patch pairs, 2.7x fewer products than p² dots at p = 3);
  3. val = sum * inv_r over the (RY-p+1) x (RX-p+1) patches whose pixels all lie in the tile (the
     others are masked), the row maximum and its smallest index merged into the running best
     (larger value, then smaller index: tiles are not visited in index order).
Query and reference tiles overlap by p - 1 pixels so that their patches tile the patch grids.
Inputs are finite (``reference.match_prepared`` zeroes the non-finite pixels and applies the
non-finite rule afterwards). The split operands are TF32 values, so the tensor cores see exactly
representable operands and the interpreter (whose ``tl.dot`` is a float32 matmul) computes the same
function. Outputs are contiguous (N,Hpq,Wpq) float32 / int64, empty for N = 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import new_output

TILE_Y = 8  # pixel tile height, query and reference (grown for patches of p >= TILE_Y)
QUERY_TILE_X = 16
REF_TILE_X = 8
# Channels per tl.dot step: 32 on the tensor cores; 16 for the IEEE float32 dot, which holds its
# operands in registers (16 spills 8 B on sm_90, 32 far more: benchmarks/static_evidence.py, 8
# warps). Not 8: Triton before 3.8 rejects a CUDA tl.dot with K < 16.
BLOCK_C_EXACT = 16
BLOCK_C_FAST = 32
NUM_WARPS = 8


@triton.jit
def _round_tf32(x):
    """float32 -> the nearest TF32 value (ties away from zero; ``precision.round_to_tf32_``)."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True)


@triton.jit
def _split_tf32(x):
    """float32 x -> (hi, lo), both TF32 values: hi = tf32(x), lo = tf32(x - hi) (x - hi is exact)."""
    hi = _round_tf32(x)
    return hi, _round_tf32(x - hi)


@triton.jit
def _patch_sums(s, P: tl.constexpr, QX: tl.constexpr, RX: tl.constexpr):
    """(QY·QX, RY·RX) pixel similarities -> the p x p patch sums at each pair of top-left pixels
    (exact where both patches lie in their tiles; other entries are don't-care)."""
    M: tl.constexpr = s.shape[0]
    N: tl.constexpr = s.shape[1]
    flat = tl.reshape(s, (M * N,))
    k = tl.arange(0, M * N)
    rows = flat
    for dx in tl.static_range(1, P):  # (qx, rx) -> (qx + dx, rx + dx): flat + dx (N + 1)
        rows += tl.gather(flat, tl.minimum(k + dx * (N + 1), M * N - 1), 0)
    sums = rows
    for dy in tl.static_range(1, P):  # (qy, ry) -> (qy + dy, ry + dy): flat + dy (QX N + RX)
        sums += tl.gather(rows, tl.minimum(k + dy * (QX * N + RX), M * N - 1), 0)
    return tl.reshape(sums, (M, N))


@triton.jit
def _match_kernel(
    uq_ptr,
    ur_ptr,
    inv_q_ptr,
    inv_r_ptr,
    score_ptr,
    index_ptr,
    C,
    Hq,
    Wq,
    Hr,
    Wr,
    hpq,
    wpq,
    hpr,
    wpr,
    q_tiles_x,
    r_tiles_x,
    r_tiles,
    P: tl.constexpr,
    SPLIT_TF32: tl.constexpr,
    QY: tl.constexpr,
    QX: tl.constexpr,
    RY: tl.constexpr,
    RX: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    nr = hpr * wpr
    # This program's query tile: pixels (qy, qx), patches at the pixels with room for a patch.
    t = tl.program_id(0)
    qi = tl.arange(0, QY * QX)
    qy = (t // q_tiles_x) * (QY - P + 1) + qi // QX
    qx = (t % q_tiles_x) * (QX - P + 1) + qi % QX
    q_pix_ok = (qy < Hq) & (qx < Wq)
    q_patch_ok = (qi // QX <= QY - P) & (qi % QX <= QX - P) & (qy < hpq) & (qx < wpq)
    q_rows = uq_ptr + (n * Hq * Wq + qy * Wq + qx) * C
    rj = tl.arange(0, RY * RX)
    cs = tl.arange(0, BLOCK_C)
    best = tl.full((QY * QX,), float("-inf"), tl.float32)
    best_idx = tl.zeros((QY * QX,), tl.int32)
    for rt in range(0, r_tiles):
        ry0 = (rt // r_tiles_x) * (RY - P + 1)
        rx0 = (rt % r_tiles_x) * (RX - P + 1)
        ry, rx = ry0 + rj // RX, rx0 + rj % RX
        r_pix_ok = (ry < Hr) & (rx < Wr)
        r_patch_ok = (rj // RX <= RY - P) & (rj % RX <= RX - P) & (ry < hpr) & (rx < wpr)
        r_rows = ur_ptr + (n * Hr * Wr + ry * Wr + rx) * C
        s = tl.zeros((QY * QX, RY * RX), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c_ok = c0 + cs < C
            a = tl.load(
                q_rows[:, None] + c0 + cs[None, :],
                mask=q_pix_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            b = tl.load(
                r_rows[None, :] + c0 + cs[:, None],
                mask=r_pix_ok[None, :] & c_ok[:, None],
                other=0.0,
            )
            if SPLIT_TF32:  # a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi, each product exact
                a_hi, a_lo = _split_tf32(a)
                b_hi, b_lo = _split_tf32(b)
                s = tl.dot(a_hi, b_hi, s, input_precision="tf32")
                s = tl.dot(a_hi, b_lo, s, input_precision="tf32")
                s = tl.dot(a_lo, b_hi, s, input_precision="tf32")
            else:
                s = tl.dot(a, b, s, input_precision="ieee")
        inv_r = tl.load(inv_r_ptr + n * nr + ry * wpr + rx, mask=r_patch_ok, other=0.0)
        val = _patch_sums(s, P, QX, RX) * inv_r[None, :]
        val = tl.where(r_patch_ok[None, :], val, float("-inf"))
        # the first maximum in tile order is the one of smallest index (row-major in both)
        blk_max, j = tl.max(val, axis=1, return_indices=True, return_indices_tie_break_left=True)
        blk_idx = (ry0 + j // RX) * wpr + rx0 + j % RX
        better = (blk_max > best) | ((blk_max == best) & (blk_idx < best_idx))
        best = tl.where(better, blk_max, best)
        best_idx = tl.where(better, blk_idx, best_idx)
    q_idx = qy * wpq + qx
    inv_q = tl.load(inv_q_ptr + n * hpq * wpq + q_idx, mask=q_patch_ok, other=0.0)
    tl.store(score_ptr + n * hpq * wpq + q_idx, best * inv_q, mask=q_patch_ok)
    tl.store(index_ptr + n * hpq * wpq + q_idx, best_idx.to(tl.int64), mask=q_patch_ok)


def tile_shape(p: int) -> tuple[int, int, int, int]:
    """(QY, QX, RY, RX): the pixel tiles for patch size ``p``, powers of two that leave at least
    two patches per tile side."""
    grow = triton.next_power_of_2(p + 1)
    return max(TILE_Y, grow), max(QUERY_TILE_X, grow), max(TILE_Y, grow), max(REF_TILE_X, grow)


def match(uq, ur, inv_q, inv_r, p, precision):
    """(score float32, index int64), each contiguous (N,Hpq,Wpq), from uq (N,Hq,Wq,C), ur
    (N,Hr,Wr,C), inv_q (N,Hpq,Wpq) and inv_r (N,Hpr,Wpr) (kernel interface in ``op``);
    ``precision`` "exact" or "fast"."""
    n, hq, wq, c = uq.shape
    _, hr, wr, _ = ur.shape
    _, hpq, wpq = inv_q.shape
    _, hpr, wpr = inv_r.shape
    score = new_output((n, hpq, wpq), torch.float32, uq.device)
    index = new_output((n, hpq, wpq), torch.int64, uq.device)
    if n == 0:  # empty batch: no programs to launch
        return score, index
    qy, qx, ry, rx = tile_shape(p)
    q_tiles_x = triton.cdiv(wpq, qx - p + 1)
    r_tiles_x = triton.cdiv(wpr, rx - p + 1)
    r_tiles = triton.cdiv(hpr, ry - p + 1) * r_tiles_x
    grid = (triton.cdiv(hpq, qy - p + 1) * q_tiles_x, n)
    _match_kernel[grid](
        uq,
        ur,
        inv_q.contiguous(),
        inv_r.contiguous(),
        score,
        index,
        c,
        hq,
        wq,
        hr,
        wr,
        hpq,
        wpq,
        hpr,
        wpr,
        q_tiles_x,
        r_tiles_x,
        r_tiles,
        P=p,
        SPLIT_TF32=precision == "fast",
        QY=qy,
        QX=qx,
        RY=ry,
        RX=rx,
        BLOCK_C=BLOCK_C_FAST if precision == "fast" else BLOCK_C_EXACT,
        num_warps=NUM_WARPS,
    )
    return score, index

"""``triton`` backend of the sliced-Wasserstein loss (GPU; CPU only under TRITON_INTERPRET=1).

Forward: the projections are one batched GEMM (cuBLAS) per side (float32 unless the caller opts into
TF32 with ``torch.set_float32_matmul_precision("high")``). Then, for float32 rows of L <= 4096
(``ON_CHIP_MAX``: every training shape, L = 12², 24², 48²), ``_sort_compare_row_kernel`` does the
rest in one program per (sample, direction) row: each value becomes a distinct 64-bit key, its
order-preserving 32-bit float key above its 32-bit position, so ``tl.sort`` (a bitonic sort of a
power-of-two block, the slots past L padded with the largest keys) sorts the row exactly as a
stable ``torch.sort`` does: NaN last, -0.0 with +0.0, ties and NaNs in input order, positions
carried in the low bits. The kernel then sums |a - b| in float64 and stores sign(a - b) at each
element's unsorted position (op.py describes the outputs). float64 rows (a 64-bit key leaves no bits
for the position, and ``tl.sort`` sorts one tensor, not pairs) and longer rows are sorted by
``torch.sort`` instead, and ``_sorted_compare_kernel`` fuses the |a - b| partial sums per (row,
block) and the sign scatter through the sort permutation.

Backward: a Triton GEMM du[n] = proj_scaled^T @ sign[n] that reads the int8 signs directly, so no
float copy of the (N, C', L) signs is made. float32 uses IEEE products (no TF32: the gradient keeps
float32 accuracy); float64 reduces with elementwise products instead of ``tl.dot``.

Non-finite values and empty inputs as reference.py: NaN sorts last, and the kernels' sign is torch's
sign (0 for d = 0 and for a NaN d), so a NaN difference makes the loss NaN and contributes no
gradient. A grid with a zero dimension is not launched: with N*C'*L = 0 the loss is 0 / 0 = NaN and
the signs are empty, with C = 0 the gradient is empty; with C' = 0 (op level only) the backward
still runs and writes zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import new_output

SCATTER_BLOCK = 1024
ON_CHIP_MAX = 4096  # longest float32 row that _sort_compare_row_kernel sorts in one program
SIGN_BIT = tl.constexpr(0x80000000)
# float32 backward GEMM tile (out channels, pixels, projections per tl.dot step). BK is 16: Triton
# before 3.8 rejects a CUDA tl.dot with K < 16 (3.8 allows 8 for float32); 32 spills on sm_90.
GEMM_BM, GEMM_BN, GEMM_BK = 64, 64, 16
LOW32 = tl.constexpr(0xFFFFFFFF)


@triton.jit
def _row_keys(x, offs, mask):
    """Distinct uint64 keys of float32 values x at positions offs: the order-preserving key of x
    (-0.0 as +0.0, every NaN the largest key) shifted up 32 bits, the position in the low bits;
    masked-off slots get the largest key and sort after every element."""
    bits = x.to(tl.uint32, bitcast=True).to(tl.uint64)
    bits = tl.where(x == 0.0, tl.zeros_like(bits), bits)
    flip = tl.where((bits & SIGN_BIT) != 0, LOW32, SIGN_BIT).to(tl.uint64)
    key = tl.where((x != x) | ~mask, LOW32, bits ^ flip).to(tl.uint64)
    return (key << 32) | offs.to(tl.uint64)


@triton.jit
def _key_value(key):
    """The float32 value of an order-preserving key (uint64 < 2**32); NaN for the NaN key."""
    flip = tl.where((key & SIGN_BIT) != 0, SIGN_BIT, LOW32).to(tl.uint64)
    return (key ^ flip).to(tl.uint32).to(tl.float32, bitcast=True)


@triton.jit
def _sort_compare_row_kernel(
    pu_ptr,
    pv_ptr,
    sign_u_ptr,
    sign_v_ptr,
    row_sum_ptr,
    length,
    HAS_V: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One (sample, direction) row of pu, pv (rows, length) float32, length <= BLOCK (a power of 2).
    row = tl.program_id(0).to(tl.int64)
    base = row * length
    offs = tl.arange(0, BLOCK)
    mask = offs < length
    a = tl.sort(_row_keys(tl.load(pu_ptr + base + offs, mask=mask, other=0.0), offs, mask))
    b = tl.sort(_row_keys(tl.load(pv_ptr + base + offs, mask=mask, other=0.0), offs, mask))
    key_a, key_b = a >> 32, b >> 32
    nan = (key_a == LOW32) | (key_b == LOW32)
    order = (key_a > key_b).to(tl.int8) - (key_a < key_b).to(tl.int8)
    sign = tl.where(nan, tl.zeros_like(order), order)
    d = tl.abs(_key_value(key_a) - _key_value(key_b)).to(tl.float64)
    tl.store(row_sum_ptr + row, tl.sum(tl.where(mask, d, 0.0), axis=0))
    tl.store(sign_u_ptr + base + (a & LOW32).to(tl.int64), sign, mask=mask)
    if HAS_V:
        tl.store(sign_v_ptr + base + (b & LOW32).to(tl.int64), -sign, mask=mask)


@triton.jit
def _sorted_compare_kernel(
    su_ptr,
    sv_ptr,
    iu_ptr,
    iv_ptr,
    sign_u_ptr,
    sign_v_ptr,
    partial_ptr,
    length,
    nblocks,
    HAS_V: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < length
    base = row.to(tl.int64) * length
    a = tl.load(su_ptr + base + offs, mask=mask, other=0.0)
    b = tl.load(sv_ptr + base + offs, mask=mask, other=0.0)
    d = a - b
    sign = (d > 0).to(tl.int8) - (d < 0).to(tl.int8)
    idx_u = tl.load(iu_ptr + base + offs, mask=mask, other=0)
    tl.store(sign_u_ptr + base + idx_u, sign, mask=mask)
    if HAS_V:
        idx_v = tl.load(iv_ptr + base + offs, mask=mask, other=0)
        tl.store(sign_v_ptr + base + idx_v, -sign, mask=mask)
    tl.store(partial_ptr + row.to(tl.int64) * nblocks + blk, tl.sum(tl.abs(d), axis=0))


@triton.jit
def _sign_gemm_kernel(
    m_ptr,
    sign_ptr,
    out_ptr,
    channels,
    num_proj,
    length,
    IS_FP64: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    # out[n, c, l] = sum_k m[k, c] * sign[n, k, l]; m is (K, C), sign (N, K, L), out (N, C, L).
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    rc = pid_m * BM + tl.arange(0, BM)
    rl = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float64 if IS_FP64 else tl.float32)
    for k0 in range(0, num_proj, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(
            m_ptr + rk[None, :] * channels + rc[:, None],
            mask=(rc[:, None] < channels) & (rk[None, :] < num_proj),
            other=0.0,
        )
        g = tl.load(
            sign_ptr + n * num_proj * length + rk[:, None] * length + rl[None, :],
            mask=(rk[:, None] < num_proj) & (rl[None, :] < length),
            other=0,
        ).to(a.dtype)
        if IS_FP64:
            acc += tl.sum(a[:, :, None] * g[None, :, :], axis=1)
        else:
            acc += tl.dot(a, g, input_precision="ieee")
    tl.store(
        out_ptr + n * channels * length + rc[:, None] * length + rl[None, :],
        acc,
        mask=(rc[:, None] < channels) & (rl[None, :] < length),
    )


def _forward_on_chip(pu, pv, need_v_sign):
    """(loss, sign_u, sign_v) of float32 projected rows pu, pv (N, C', L), 0 < L <= ON_CHIP_MAX."""
    n, num_proj, length = pu.shape
    rows, block = n * num_proj, max(16, triton.next_power_of_2(length))
    sign_u = new_output((n, num_proj, length), torch.int8, pu.device)
    sign_v = new_output((n, num_proj, length) if need_v_sign else (0,), torch.int8, pu.device)
    row_sum = new_output((rows,), torch.float64, pu.device)
    if rows > 0:
        _sort_compare_row_kernel[(rows,)](
            pu,
            pv,
            sign_u,
            sign_v if need_v_sign else sign_u,
            row_sum,
            length,
            HAS_V=need_v_sign,
            BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )
    return (row_sum.sum() / (rows * length)).to(pu.dtype), sign_u, sign_v


def _forward_sorted(u, v, proj, need_v_sign):
    """(loss, sign_u, sign_v) with the projected rows sorted by ``torch.sort`` (u's projection is
    sorted before v is projected, to bound the peak)."""
    su, iu = _project(proj, u).sort(dim=2)
    pv = _project(proj, v)
    sv, iv = pv.sort(dim=2) if need_v_sign else (pv.sort(dim=2).values, iu)
    del pv
    n, num_proj, length = su.shape
    rows, nblocks = n * num_proj, triton.cdiv(length, SCATTER_BLOCK)
    sign_u = new_output((n, num_proj, length), torch.int8, su.device)
    sign_v = new_output((n, num_proj, length) if need_v_sign else (0,), torch.int8, su.device)
    partial = new_output((rows, nblocks), su.dtype, su.device)
    if rows * nblocks > 0:
        _sorted_compare_kernel[(rows, nblocks)](
            su,
            sv,
            iu,
            iv,
            sign_u,
            sign_v if need_v_sign else sign_u,
            partial,
            length,
            nblocks,
            HAS_V=need_v_sign,
            BLOCK=SCATTER_BLOCK,
        )
    loss = partial.sum(dtype=torch.float64) / (rows * length)
    return loss.to(su.dtype), sign_u, sign_v


def _project(proj, x):
    """proj (C', C) @ x (N, C, H, W) in proj's dtype: (N, C', H*W), contiguous."""
    n, c, h, w = x.shape
    return (proj @ x.reshape(n, c, h * w).to(proj.dtype)).contiguous()


def forward(u, v, proj, need_v_sign):
    """(loss, sign_u, sign_v) for u, v (N, C, H, W) and proj (C', C) in the compute dtype, as the
    ``op`` module docstring describes: projections by GEMM, then ``_sort_compare_row_kernel``
    (float32 rows of at most ON_CHIP_MAX) or ``torch.sort`` and ``_sorted_compare_kernel``."""
    length = u.shape[2] * u.shape[3]
    if proj.dtype == torch.float32 and 0 < length <= ON_CHIP_MAX:
        return _forward_on_chip(_project(proj, u), _project(proj, v), need_v_sign)
    return _forward_sorted(u, v, proj, need_v_sign)


def backward(sign, proj_scaled):
    """proj_scaled^T @ sign[n] per sample for sign int8 (N, C', H*W) and proj_scaled (C', C):
    (N, C, H*W) in proj_scaled's dtype, by ``_sign_gemm_kernel``."""
    n, num_proj, length = sign.shape
    channels = proj_scaled.shape[1]
    is_fp64 = proj_scaled.dtype == torch.float64
    bm, bn, bk = (16, 32, 16) if is_fp64 else (GEMM_BM, GEMM_BN, GEMM_BK)
    out = new_output((n, channels, length), proj_scaled.dtype, sign.device)
    grid = (triton.cdiv(channels, bm), triton.cdiv(length, bn), n)
    if out.numel() > 0:
        _sign_gemm_kernel[grid](
            proj_scaled.contiguous(),
            sign.contiguous(),
            out,
            channels,
            num_proj,
            length,
            IS_FP64=is_fp64,
            BM=bm,
            BN=bn,
            BK=bk,
        )
    return out

"""``triton`` backend of the sliced-Wasserstein loss (GPU; CPU only under TRITON_INTERPRET=1).

Forward: the projections are one batched GEMM (cuBLAS) and the rows are sorted with ``torch.sort``;
a Triton kernel then fuses the rest: |a - b| partial sums per (row, block) and the int8 signs
scattered back through the sort permutation (op.py describes the outputs). ``tl.sort`` is not used:
it sorts values only (a permutation would need 64-bit packed keys), it needs power-of-two lengths
held by one program, and the feature maps of the loss have L = 48², 24², 12² (never a power of
two) or 256² (too long for one program); torch's segmented radix sort is used instead.

Backward: a Triton GEMM du[n] = proj_scaled^T @ sign[n] that reads the int8 signs directly, so no
float copy of the (N, C', L) signs is made. float32 uses IEEE products (no TF32: the gradient keeps
float32 accuracy); float64 reduces with elementwise products instead of ``tl.dot``.

Non-finite values and empty inputs as reference.py: torch.sort puts every NaN last, and the kernel's
sign (d > 0) - (d < 0) is torch's sign (0 for d = 0 and for NaN d), so a NaN difference makes the
loss NaN and contributes no gradient. A grid with a zero dimension is not launched: with
N*C'*L = 0 the loss is 0 / 0 = NaN and the signs are empty, with C = 0 the gradient is empty; with
C' = 0 (op level only) the backward still runs and writes zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import new_output

SCATTER_BLOCK = 1024


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


def forward(u, v, proj, need_v_sign):
    """(loss, sign_u, sign_v) for u, v (N, C, H, W) and proj (C', C) in the compute dtype, as the
    ``op`` module docstring describes: projections by GEMM, rows sorted by ``torch.sort``, the rest
    in ``_sorted_compare_kernel``."""
    n, c = u.shape[:2]
    length = u.shape[2] * u.shape[3]
    num_proj = proj.shape[0]
    su, iu = (proj @ u.reshape(n, c, length).to(proj.dtype)).sort(dim=2)
    pv = proj @ v.reshape(n, c, length).to(proj.dtype)
    sv, iv = pv.sort(dim=2) if need_v_sign else (pv.sort(dim=2).values, iu)
    del pv
    rows, nblocks = n * num_proj, triton.cdiv(length, SCATTER_BLOCK)
    sign_u = new_output((n, num_proj, length), torch.int8, u.device)
    sign_v = new_output((n, num_proj, length) if need_v_sign else (0,), torch.int8, u.device)
    partial = new_output((rows, nblocks), proj.dtype, u.device)
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
    return loss.to(proj.dtype), sign_u, sign_v


def backward(sign, proj_scaled):
    """proj_scaled^T @ sign[n] per sample for sign int8 (N, C', H*W) and proj_scaled (C', C):
    (N, C, H*W) in proj_scaled's dtype, by ``_sign_gemm_kernel``."""
    n, num_proj, length = sign.shape
    channels = proj_scaled.shape[1]
    is_fp64 = proj_scaled.dtype == torch.float64
    bm, bn, bk = (16, 32, 16) if is_fp64 else (64, 64, 32)
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

"""``triton`` backend of the packed deformable convolution (CUDA tensors; CPU tensors under
``TRITON_INTERPRET=1``). Geometry convention and NaN/Inf rule: ``reference.py``.

Kernels (a program owns a block of pixels of one sample; the tap geometry, including the one
finiteness test of each position, is computed once per program and tap and reused for every channel):
  _forward_kernel       out tile (BLOCK_C output channels x BLOCK_P pixels). Depthwise (C/groups == 1):
                        each output channel samples its own input channel. Grouped/dense: the channels
                        of the tile belong to one group and every sample of an input channel is reused
                        for all of them: a (BLOCK_CI x BLOCK_P) tile of samples times the tap's weights
                        on the tensor cores (``_mma``) when the group has MMA_MIN_CHANNELS channels in
                        and out, else outer-product accumulation.
  _input_grad_kernel    column gradient dcol = W^T go (rows are input channels; ``_mma`` tiles for wide
                        groups), dx by atomic scatter
                        of dcol x corner weight, dgeom summed over all channels inside the program (it
                        owns its pixels: no atomics), and for depthwise dweight (per-tap channel sums,
                        atomic add).
  _weight_grad_kernel   dweight of grouped/dense convs: (co x ci) tile of go x sampled columns summed
                        over a chunk of pixels (``_mma`` for wide groups), atomic add.
Tensor-core operands, tiles and precision: ``_mma`` and docs/design.md (deform-conv, "Dense and
grouped convolutions on the tensor cores").
Layouts: x and grad_out are read in x's memory format (``op.memory_format_of``; constexpr CL: a
channel stride of 1 and a pixel stride of C, so channels-last features need no copy) and out and dx
are written in it; geom, dgeom, weight and dweight are contiguous (op.py's fakes say the same). With
CL the output tiles are stored as 16-byte vectors; the corner gathers stay 4-byte loads (Triton's
axis analysis does not prove the channel contiguity of the data-dependent corner addresses, which
the CUDA C++ kernels load as explicit 16-byte vectors). Half inputs
are computed in float32 (float64 stays float64); accumulating buffers are zero-filled in that type
and cast back, the other outputs come from ``_checks.new_output``. Empty N, H or W launch nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import compute_dtype, new_output
from .op import memory_format_of

BLOCK_P = 64  # pixels per program (forward, input gradient)
# Warps of a forward program on Hopper and newer: at 4, ptxas for sm_90 holds the depthwise forward
# at 255 registers and spills ~500 B (benchmarks/static_evidence.py); at 8 it spills nothing. Older
# GPUs keep 4 (sm_80: no spill at 4, a 16 B spill for fp16 at 8).
HOPPER_FORWARD_WARPS = 8
WEIGHT_BLOCK_P = 32  # pixels per step of the weight-gradient reduction
WEIGHT_CHUNK_PIXELS = 4096  # pixels summed by one weight-gradient program

# How the grouped/dense kernels multiply their channel tiles (constexpr MMA; ``_mma_mode``):
# FMA = 0: outer products on the CUDA cores, for groups of fewer than MMA_MIN_CHANNELS channels and
# for float64 (its tl.dot path, mode 1 until 2026-12-04, failed the reference comparison on an H200
# with Triton 3.6 at 40 -> 72 channels, while the interpreter passed it: float64 is the checking
# dtype, so it takes the path that is verified on the GPU).
FMA = 0
MMA_SPLIT_TF32 = 2  # float32: three TF32 tensor-core products of split operands (``_mma``)
MMA_F16 = 3  # float16 storage: float16 operands, float32 accumulation
MMA_BF16 = 4  # bfloat16 storage: bfloat16 operands, float32 accumulation
MMA_BF16_AS_F32 = 5  # the same values multiplied in float32: the interpreter's bf16 dot is wrong
MMA_MIN_CHANNELS = 8  # per group, in and out: below it a 16-wide tensor-core tile is mostly padding
# Tensor-core programs: channel tiles (out x in) and warps that ptxas holds without spilling on sm_90
# and sm_80 (benchmarks/static_evidence.py): forward 64 x 32 (64 x 16 for split TF32, which holds
# two parts of each operand), 8 warps; input gradient 16 x 16, 8 warps for split TF32 and 4 for
# half operands (at 8 ptxas caps them at 128 registers and spills); weight gradient 64 x 32, 8 warps.
MMA_WARPS = 8


@triton.jit
def _corner(iy, ix, ly, lx, vy, vx, A: tl.constexpr, B: tl.constexpr, W, SP):
    """Corner (A, B) of the bilinear cell: element offset (pixel index times the pixel stride SP),
    validity, weight and its d/dy, d/dx."""
    valid = vy & vx
    idx = tl.where(valid, ((iy + A) * W + (ix + B)) * SP, 0)
    wy_ = ly if A == 1 else 1.0 - ly
    wx_ = lx if B == 1 else 1.0 - lx
    dy_ = 1.0 if A == 1 else -1.0
    dx_ = 1.0 if B == 1 else -1.0
    zero = tl.zeros_like(ly)
    return (
        idx,
        valid,
        tl.where(valid, wy_ * wx_, zero),
        tl.where(valid, dy_ * wx_, zero),
        tl.where(valid, wy_ * dx_, zero),
    )


@triton.jit
def _cell(py, px, H, W):
    """Top-left corner (iy, ix), fractions (ly, lx) and the validity of rows/columns 0 and 1."""
    y0f = tl.floor(py)
    x0f = tl.floor(px)
    vy0 = (y0f >= 0) & (y0f <= H - 1)
    vy1 = (y0f >= -1) & (y0f <= H - 2)
    vx0 = (x0f >= 0) & (x0f <= W - 1)
    vx1 = (x0f >= -1) & (x0f <= W - 2)
    iy = tl.where(vy0 | vy1, y0f, 0.0).to(tl.int32)
    ix = tl.where(vx0 | vx1, x0f, 0.0).to(tl.int32)
    return iy, ix, py - y0f, px - x0f, vy0, vy1, vx0, vx1


@triton.jit
def _bilinear(py, px, H, W, SP):
    """``bad`` (NaN where py or px is not finite, else 0: the start of the sample and of the position
    gradient) and the four corners (0,0), (0,1), (1,0), (1,1) of each sampling position, each as
    (element offset in a channel plane of pixel stride SP, validity, weight, d weight/dy,
    d weight/dx): 21 values. A non-finite position fails every validity test, so it reads and
    writes no corner."""
    finite = (tl.abs(py) < float("inf")) & (tl.abs(px) < float("inf"))
    bad = tl.where(finite, 0.0, float("nan")).to(py.dtype)
    iy, ix, ly, lx, vy0, vy1, vx0, vx1 = _cell(py, px, H, W)
    i00, m00, w00, y00, x00 = _corner(iy, ix, ly, lx, vy0, vx0, 0, 0, W, SP)
    i01, m01, w01, y01, x01 = _corner(iy, ix, ly, lx, vy0, vx1, 0, 1, W, SP)
    i10, m10, w10, y10, x10 = _corner(iy, ix, ly, lx, vy1, vx0, 1, 0, W, SP)
    i11, m11, w11, y11, x11 = _corner(iy, ix, ly, lx, vy1, vx1, 1, 1, W, SP)
    return (
        bad,
        i00,
        m00,
        w00,
        y00,
        x00,
        i01,
        m01,
        w01,
        y01,
        x01,
        i10,
        m10,
        w10,
        y10,
        x10,
        i11,
        m11,
        w11,
        y11,
        x11,
    )


@triton.jit
def _strides(C, HW, CL: tl.constexpr):
    """(channel stride, pixel stride) of a dense (N, C, H, W) tensor: NCHW, or channels-last when CL
    (then a pixel's channels are contiguous and Triton can load them as vectors)."""
    if CL:
        return 1, C
    else:
        return HW, 1


@triton.jit
def _pixel_block(p0, HW, W, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Pixels p0 .. p0 + BLOCK_P - 1 of an H x W image: flat index, in-image mask, row, column."""
    p = p0 + tl.arange(0, BLOCK_P)
    return p, p < HW, (p // W).to(ACC), (p % W).to(ACC)


@triton.jit
def _load_affine(geom_n, p, pmask, HW, AFFINE: tl.constexpr, ACC: tl.constexpr):
    """Per-pixel A0..A3, by, bx (affine mode); zeros, unused, in general mode."""
    if not AFFINE:
        zero = tl.zeros(p.shape, dtype=ACC)
        return zero, zero, zero, zero, zero, zero
    a0 = tl.load(geom_n + 0 * HW + p, mask=pmask, other=0.0).to(ACC)
    a1 = tl.load(geom_n + 1 * HW + p, mask=pmask, other=0.0).to(ACC)
    a2 = tl.load(geom_n + 2 * HW + p, mask=pmask, other=0.0).to(ACC)
    a3 = tl.load(geom_n + 3 * HW + p, mask=pmask, other=0.0).to(ACC)
    by = tl.load(geom_n + 4 * HW + p, mask=pmask, other=0.0).to(ACC)
    bx = tl.load(geom_n + 5 * HW + p, mask=pmask, other=0.0).to(ACC)
    return a0, a1, a2, a3, by, bx


@triton.jit
def _position(
    geom_n,
    p,
    pmask,
    HW,
    qy,
    qx,
    a0,
    a1,
    a2,
    a3,
    by,
    bx,
    t,
    K: tl.constexpr,
    AFFINE: tl.constexpr,
    ACC: tl.constexpr,
):
    """Absolute sampling position of tap t for the pixels p (affine: from the preloaded A, b)."""
    gy = t // K - K // 2
    gx = t % K - K // 2
    if AFFINE:
        py = qy + a0 * gy + a1 * gx + by
        px = qx + a2 * gy + a3 * gx + bx
    else:
        py = qy + gy + tl.load(geom_n + (2 * t) * HW + p, mask=pmask, other=0.0).to(ACC)
        px = qx + gx + tl.load(geom_n + (2 * t + 1) * HW + p, mask=pmask, other=0.0).to(ACC)
    return py, px


@triton.jit
def _gather(plane, idx, valid, mask, w, ACC: tl.constexpr):
    """w * plane[idx] for one corner; ``plane`` may be (C,1) pointers and idx (1,P) or (P,)."""
    return w * tl.load(plane + idx, mask=valid & mask, other=0.0).to(ACC)


@triton.jit
def _sample(
    plane, m, bad, i00, m00, w00, i01, m01, w01, i10, m10, w10, i11, m11, w11, ACC: tl.constexpr
):
    """The bilinear samples (rows, BLOCK_P) of the channel rows ``plane`` (rows, 1) at one tap: the
    four corners (per-pixel vectors from ``_bilinear``) weighted and summed, plus ``bad``; ``m``
    (rows, BLOCK_P) masks the rows and pixels that exist."""
    return (
        bad[None, :]
        + _gather(plane, i00[None, :], m00[None, :], m, w00[None, :], ACC)
        + _gather(plane, i01[None, :], m01[None, :], m, w01[None, :], ACC)
        + _gather(plane, i10[None, :], m10[None, :], m, w10[None, :], ACC)
        + _gather(plane, i11[None, :], m11[None, :], m, w11[None, :], ACC)
    )


@triton.jit
def _trunc_tf32(x):
    """float32 x with its 13 low mantissa bits cleared: a TF32 value no larger in magnitude than x
    (so FLT_MAX stays finite); inf stays inf and NaN stays NaN (also one whose payload is all in
    the cleared bits)."""
    cut = (x.to(tl.int32, bitcast=True) & -0x2000).to(tl.float32, bitcast=True)
    return tl.where(x == x, cut, x)


@triton.jit
def _finite_or_zero(x):
    return tl.where(tl.abs(x) < float("inf"), x, 0.0)


@triton.jit
def _mma(acc, a, b, MMA: tl.constexpr):
    """acc + a @ b for tiles a (M, K), b (K, N) holding values of the compute dtype (M, N, K >= 16).

    Half storage: the operands are rounded to the storage dtype (exact for loaded values; the
    sampled columns round there, docs/design.md) and their products summed in float32. float32:
    a = a_hi + a_lo with a_hi = _trunc_tf32(a) and a_lo = _trunc_tf32(a - a_hi) (likewise b), and
    acc + a_hi b_hi + a_hi b_lo + a_lo b_hi on the TF32 tensor cores: every operand is a TF32 value,
    so the hardware multiplies exactly what the interpreter does, and the result is float32 up to
    a few units of 2^-21 relative. inf and NaN reach acc only through a_hi b_hi, which has the
    reference's non-finite products (x_hi is non-finite or zero exactly when x is): the low parts
    and the high parts they meet are taken as zero where not finite."""
    if MMA == 2:
        a_hi = _trunc_tf32(a)
        b_hi = _trunc_tf32(b)
        a_lo = _trunc_tf32(_finite_or_zero(a - a_hi))
        b_lo = _trunc_tf32(_finite_or_zero(b - b_hi))
        acc = tl.dot(a_hi, b_hi, acc, input_precision="tf32")
        acc = tl.dot(_finite_or_zero(a_hi), b_lo, acc, input_precision="tf32")
        return tl.dot(a_lo, _finite_or_zero(b_hi), acc, input_precision="tf32")
    elif MMA == 3:
        return tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
    elif MMA == 4:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        a16 = a.to(tl.bfloat16).to(tl.float32)
        b16 = b.to(tl.bfloat16).to(tl.float32)
        return tl.dot(a16, b16, acc, input_precision="ieee")


@triton.jit
def _forward_kernel(
    x_ptr,
    geom_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    C,
    C_out,
    H,
    W,
    c_in_g,
    c_out_g,
    blocks_per_group,
    K: tl.constexpr,
    AFFINE: tl.constexpr,
    DEPTHWISE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CL: tl.constexpr,
    ACC: tl.constexpr,
    MMA: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_CI: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    HW = H * W
    G: tl.constexpr = 6 if AFFINE else 2 * K * K
    KK: tl.constexpr = K * K
    p, pmask, qy, qx = _pixel_block(pid_p * BLOCK_P, HW, W, BLOCK_P, ACC)
    if DEPTHWISE:
        co = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = co < C_out
    else:
        g = pid_c // blocks_per_group
        co_in_g = (pid_c % blocks_per_group) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = co_in_g < c_out_g
        co = g * c_out_g + co_in_g
    sxc, sxp = _strides(C, HW, CL)
    soc, sop = _strides(C_out, HW, CL)
    x_n = x_ptr + n * C * HW
    geom_n = geom_ptr + n * G * HW
    a0, a1, a2, a3, by, bx = _load_affine(geom_n, p, pmask, HW, AFFINE, ACC)
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for t in tl.static_range(KK):
        py, px = _position(geom_n, p, pmask, HW, qy, qx, a0, a1, a2, a3, by, bx, t, K, AFFINE, ACC)
        bad, i00, m00, w00, _, _, i01, m01, w01, _, _, i10, m10, w10, _, _, i11, m11, w11, _, _ = (
            _bilinear(py, px, H, W, sxp)
        )
        if DEPTHWISE:
            plane = x_n + ((co // c_out_g).to(tl.int64) * sxc)[:, None]
            m = cmask[:, None] & pmask[None, :]
            v = _sample(
                plane, m, bad, i00, m00, w00, i01, m01, w01, i10, m10, w10, i11, m11, w11, ACC
            )
            wt = tl.load(w_ptr + co * KK + t, mask=cmask, other=0.0).to(ACC)
            acc += wt[:, None] * v
        elif MMA != 0:
            # The tap's sampled columns of a tile of input channels (BLOCK_CI, BLOCK_P), gathered
            # once for all BLOCK_C output channels, times the tap's weights on the tensor cores.
            for c0 in range(0, c_in_g, BLOCK_CI):
                ci = c0 + tl.arange(0, BLOCK_CI)
                cimask = ci < c_in_g
                plane = x_n + ((g * c_in_g + ci).to(tl.int64) * sxc)[:, None]
                m = cimask[:, None] & pmask[None, :]
                v = _sample(
                    plane, m, bad, i00, m00, w00, i01, m01, w01, i10, m10, w10, i11, m11, w11, ACC
                )
                wmask = cmask[:, None] & cimask[None, :]
                wt = tl.load(
                    w_ptr + (co[:, None] * c_in_g + ci[None, :]) * KK + t, mask=wmask, other=0.0
                )
                acc = _mma(acc, wt.to(ACC), v, MMA)
        else:
            for ci in range(c_in_g):
                plane = x_n + (g * c_in_g + ci).to(tl.int64) * sxc
                v = (
                    bad
                    + _gather(plane, i00, m00, pmask, w00, ACC)
                    + _gather(plane, i01, m01, pmask, w01, ACC)
                    + _gather(plane, i10, m10, pmask, w10, ACC)
                    + _gather(plane, i11, m11, pmask, w11, ACC)
                )
                wt = tl.load(w_ptr + (co * c_in_g + ci) * KK + t, mask=cmask, other=0.0).to(ACC)
                acc += wt[:, None] * v[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=cmask, other=0.0).to(ACC)[:, None]
    out = out_ptr + n * C_out * HW + (co.to(tl.int64) * soc)[:, None] + (p * sop)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _scatter_and_grad(
    x_plane,
    dx_plane,
    dcol,
    m,
    bad,
    i00,
    m00,
    w00,
    y00,
    x00,
    i01,
    m01,
    w01,
    y01,
    x01,
    i10,
    m10,
    w10,
    y10,
    x10,
    i11,
    m11,
    w11,
    y11,
    x11,
    ACC: tl.constexpr,
):
    """For column gradients dcol at one tap: scatter dcol x corner weight into the inside corners of
    dx, and return the sample value (starting at ``bad``) and dcol x d(sample)/d(position)."""
    p00 = tl.load(x_plane + i00, mask=m00 & m, other=0.0).to(ACC)
    p01 = tl.load(x_plane + i01, mask=m01 & m, other=0.0).to(ACC)
    p10 = tl.load(x_plane + i10, mask=m10 & m, other=0.0).to(ACC)
    p11 = tl.load(x_plane + i11, mask=m11 & m, other=0.0).to(ACC)
    v = bad + w00 * p00 + w01 * p01 + w10 * p10 + w11 * p11
    gy = dcol * (y00 * p00 + y01 * p01 + y10 * p10 + y11 * p11)
    gx = dcol * (x00 * p00 + x01 * p01 + x10 * p10 + x11 * p11)
    tl.atomic_add(dx_plane + i00, dcol * w00, mask=m00 & m)
    tl.atomic_add(dx_plane + i01, dcol * w01, mask=m01 & m)
    tl.atomic_add(dx_plane + i10, dcol * w10, mask=m10 & m)
    tl.atomic_add(dx_plane + i11, dcol * w11, mask=m11 & m)
    return v, gy, gx


@triton.jit
def _input_grad_kernel(
    go_ptr,
    x_ptr,
    geom_ptr,
    w_ptr,
    dx_ptr,
    dgeom_ptr,
    dw_ptr,
    C,
    C_out,
    H,
    W,
    groups,
    c_in_g,
    c_out_g,
    K: tl.constexpr,
    AFFINE: tl.constexpr,
    DEPTHWISE: tl.constexpr,
    CL: tl.constexpr,
    ACC: tl.constexpr,
    MMA: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    HW = H * W
    G: tl.constexpr = 6 if AFFINE else 2 * K * K
    KK: tl.constexpr = K * K
    p, pmask, qy, qx = _pixel_block(pid_p * BLOCK_P, HW, W, BLOCK_P, ACC)
    sxc, sxp = _strides(C, HW, CL)  # x and dx
    sgc, sgp = _strides(C_out, HW, CL)  # grad_out
    x_n = x_ptr + n * C * HW
    dx_n = dx_ptr + n * C * HW
    go_n = go_ptr + n * C_out * HW
    geom_n = geom_ptr + n * G * HW
    dgeom_n = dgeom_ptr + n * G * HW
    a0, a1, a2, a3, by, bx = _load_affine(geom_n, p, pmask, HW, AFFINE, ACC)
    da0 = tl.zeros((BLOCK_P,), dtype=ACC)
    da1 = tl.zeros((BLOCK_P,), dtype=ACC)
    da2 = tl.zeros((BLOCK_P,), dtype=ACC)
    da3 = tl.zeros((BLOCK_P,), dtype=ACC)
    dby = tl.zeros((BLOCK_P,), dtype=ACC)
    dbx = tl.zeros((BLOCK_P,), dtype=ACC)
    for t in tl.static_range(KK):
        py, px = _position(geom_n, p, pmask, HW, qy, qx, a0, a1, a2, a3, by, bx, t, K, AFFINE, ACC)
        (
            bad,
            i00,
            m00,
            w00,
            y00,
            x00,
            i01,
            m01,
            w01,
            y01,
            x01,
            i10,
            m10,
            w10,
            y10,
            x10,
            i11,
            m11,
            w11,
            y11,
            x11,
        ) = _bilinear(py, px, H, W, sxp)
        gpy = bad  # NaN for a non-finite position, whatever the channels
        gpx = bad
        if DEPTHWISE:
            # Rows are input channels c; the column gradient sums the c_out_g output channels
            # c*c_out_g + j of c before it meets the sample's derivative (the reference's grouping).
            for c0 in range(0, C, BLOCK_C):
                ci = c0 + tl.arange(0, BLOCK_C)
                cmask = ci < C
                m = cmask[:, None] & pmask[None, :]
                dcol = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
                for j in range(c_out_g):
                    co = (ci * c_out_g + j).to(tl.int64)
                    go = tl.load(
                        go_n + co[:, None] * sgc + (p * sgp)[None, :], mask=m, other=0.0
                    ).to(ACC)
                    dcol += (
                        tl.load(w_ptr + co * KK + t, mask=cmask, other=0.0).to(ACC)[:, None] * go
                    )
                rows = ci.to(tl.int64)[:, None] * sxc
                v, gy, gx = _scatter_and_grad(
                    x_n + rows,
                    dx_n + rows,
                    dcol,
                    m,
                    bad[None, :],
                    i00[None, :],
                    m00[None, :],
                    w00[None, :],
                    y00[None, :],
                    x00[None, :],
                    i01[None, :],
                    m01[None, :],
                    w01[None, :],
                    y01[None, :],
                    x01[None, :],
                    i10[None, :],
                    m10[None, :],
                    w10[None, :],
                    y10[None, :],
                    x10[None, :],
                    i11[None, :],
                    m11[None, :],
                    w11[None, :],
                    y11[None, :],
                    x11[None, :],
                    ACC,
                )
                gpy += tl.sum(gy, axis=0)
                gpx += tl.sum(gx, axis=0)
                for j in range(c_out_g):
                    co = (ci * c_out_g + j).to(tl.int64)
                    go = tl.load(
                        go_n + co[:, None] * sgc + (p * sgp)[None, :], mask=m, other=0.0
                    ).to(ACC)
                    tl.atomic_add(dw_ptr + co * KK + t, tl.sum(go * v, axis=1), mask=cmask)
        else:
            # Rows are input channels of group g: dcol[ci, p] = sum_co w[co, ci, t] go[co, p].
            for g in range(groups):
                for c0 in range(0, c_in_g, BLOCK_C):
                    ci_in_g = c0 + tl.arange(0, BLOCK_C)
                    cmask = ci_in_g < c_in_g
                    dcol = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
                    if MMA != 0:  # dcol = W_t^T go, (BLOCK_C, BLOCK_CO) x (BLOCK_CO, BLOCK_P) tiles
                        for o0 in range(0, c_out_g, BLOCK_CO):
                            co_in_g = o0 + tl.arange(0, BLOCK_CO)
                            omask = co_in_g < c_out_g
                            co = (g * c_out_g + co_in_g).to(tl.int64)
                            gmask = omask[:, None] & pmask[None, :]
                            go = tl.load(
                                go_n + co[:, None] * sgc + (p * sgp)[None, :], mask=gmask, other=0.0
                            )
                            wmask = cmask[:, None] & omask[None, :]
                            w_off = (co[None, :] * c_in_g + ci_in_g[:, None]) * KK + t
                            wt = tl.load(w_ptr + w_off, mask=wmask, other=0.0)
                            dcol = _mma(dcol, wt.to(ACC), go.to(ACC), MMA)
                    else:
                        for co in range(g * c_out_g, (g + 1) * c_out_g):
                            go = tl.load(go_n + co * sgc + p * sgp, mask=pmask, other=0.0).to(ACC)
                            wt = tl.load(
                                w_ptr + (co * c_in_g + ci_in_g) * KK + t, mask=cmask, other=0.0
                            ).to(ACC)
                            dcol += wt[:, None] * go[None, :]
                    ci = (g * c_in_g + ci_in_g).to(tl.int64)[:, None] * sxc
                    _, gy, gx = _scatter_and_grad(
                        x_n + ci,
                        dx_n + ci,
                        dcol,
                        cmask[:, None] & pmask[None, :],
                        bad[None, :],
                        i00[None, :],
                        m00[None, :],
                        w00[None, :],
                        y00[None, :],
                        x00[None, :],
                        i01[None, :],
                        m01[None, :],
                        w01[None, :],
                        y01[None, :],
                        x01[None, :],
                        i10[None, :],
                        m10[None, :],
                        w10[None, :],
                        y10[None, :],
                        x10[None, :],
                        i11[None, :],
                        m11[None, :],
                        w11[None, :],
                        y11[None, :],
                        x11[None, :],
                        ACC,
                    )
                    gpy += tl.sum(gy, axis=0)
                    gpx += tl.sum(gx, axis=0)
        gy_ = t // K - K // 2
        gx_ = t % K - K // 2
        if AFFINE:
            da0 += gpy * gy_
            da1 += gpy * gx_
            da2 += gpx * gy_
            da3 += gpx * gx_
            dby += gpy
            dbx += gpx
        else:
            tl.store(dgeom_n + (2 * t) * HW + p, gpy.to(dgeom_ptr.dtype.element_ty), mask=pmask)
            tl.store(dgeom_n + (2 * t + 1) * HW + p, gpx.to(dgeom_ptr.dtype.element_ty), mask=pmask)
    if AFFINE:
        ty = dgeom_ptr.dtype.element_ty
        tl.store(dgeom_n + 0 * HW + p, da0.to(ty), mask=pmask)
        tl.store(dgeom_n + 1 * HW + p, da1.to(ty), mask=pmask)
        tl.store(dgeom_n + 2 * HW + p, da2.to(ty), mask=pmask)
        tl.store(dgeom_n + 3 * HW + p, da3.to(ty), mask=pmask)
        tl.store(dgeom_n + 4 * HW + p, dby.to(ty), mask=pmask)
        tl.store(dgeom_n + 5 * HW + p, dbx.to(ty), mask=pmask)


@triton.jit
def _weight_grad_kernel(
    go_ptr,
    x_ptr,
    geom_ptr,
    dw_ptr,
    N,
    C,
    C_out,
    H,
    W,
    c_in_g,
    c_out_g,
    co_blocks,
    ci_blocks,
    chunk_pixels,
    K: tl.constexpr,
    AFFINE: tl.constexpr,
    CL: tl.constexpr,
    ACC: tl.constexpr,
    MMA: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_CI: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """dweight[co, ci, t] += sum over one (n, pixel chunk) of go[n, co, p] * sample(x[n, ci], t, p);
    grid (groups * co_blocks * ci_blocks, K*K, N * chunks). With MMA the pixel sum of each step is
    the tensor-core product go (BLOCK_CO, BLOCK_P) x cols^T (BLOCK_P, BLOCK_CI)."""
    pid = tl.program_id(0)
    t = tl.program_id(1)
    pid_nc = tl.program_id(2)
    HW = H * W
    G: tl.constexpr = 6 if AFFINE else 2 * K * K
    KK: tl.constexpr = K * K
    chunks = tl.cdiv(HW, chunk_pixels)
    n = (pid_nc // chunks).to(tl.int64)
    p_begin = (pid_nc % chunks) * chunk_pixels
    ci_blk = pid % ci_blocks
    co_blk = (pid // ci_blocks) % co_blocks
    g = pid // (ci_blocks * co_blocks)
    co_in_g = co_blk * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci_in_g = ci_blk * BLOCK_CI + tl.arange(0, BLOCK_CI)
    comask = co_in_g < c_out_g
    cimask = ci_in_g < c_in_g
    co = g * c_out_g + co_in_g
    ci = g * c_in_g + ci_in_g
    sxc, sxp = _strides(C, HW, CL)
    sgc, sgp = _strides(C_out, HW, CL)
    go_rows = go_ptr + n * C_out * HW + (co.to(tl.int64) * sgc)[:, None]
    x_rows = x_ptr + n * C * HW + (ci.to(tl.int64) * sxc)[:, None]
    geom_n = geom_ptr + n * G * HW
    acc = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=ACC)
    for p0 in range(p_begin, tl.minimum(p_begin + chunk_pixels, HW), BLOCK_P):
        p, pmask, qy, qx = _pixel_block(p0, HW, W, BLOCK_P, ACC)
        a0, a1, a2, a3, by, bx = _load_affine(geom_n, p, pmask, HW, AFFINE, ACC)
        py, px = _position(geom_n, p, pmask, HW, qy, qx, a0, a1, a2, a3, by, bx, t, K, AFFINE, ACC)
        bad, i00, m00, w00, _, _, i01, m01, w01, _, _, i10, m10, w10, _, _, i11, m11, w11, _, _ = (
            _bilinear(py, px, H, W, sxp)
        )
        m = cimask[:, None] & pmask[None, :]
        cols = _sample(
            x_rows, m, bad, i00, m00, w00, i01, m01, w01, i10, m10, w10, i11, m11, w11, ACC
        )
        go = tl.load(
            go_rows + (p * sgp)[None, :], mask=comask[:, None] & pmask[None, :], other=0.0
        ).to(ACC)
        if MMA != 0:
            acc = _mma(acc, go, tl.trans(cols), MMA)
        else:
            acc += tl.sum(go[:, None, :] * cols[None, :, :], axis=2)
    dst = dw_ptr + (co[:, None] * c_in_g + ci_in_g[None, :]) * KK + t
    tl.atomic_add(dst, acc, mask=comask[:, None] & cimask[None, :])


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _channel_block(n: int, cap: int) -> int:
    return max(2, min(cap, triton.next_power_of_2(n)))


def _mma_block(n: int, cap: int) -> int:
    """A tensor-core tile side for n channels: a power of two in [16, cap]."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def _mma_mode(x: torch.Tensor, c_in_g: int, c_out_g: int) -> int:
    """How the grouped/dense kernels multiply channel tiles for x's dtype (the MMA constants):
    FMA for float64, depthwise convolutions and groups of fewer than MMA_MIN_CHANNELS channels."""
    if x.dtype == torch.float64 or min(c_in_g, c_out_g) < MMA_MIN_CHANNELS:
        return FMA
    if x.dtype == torch.bfloat16:
        interpreted = x.device.type == "cpu"  # only the interpreter runs Triton on CPU tensors
        return MMA_BF16_AS_F32 if interpreted else MMA_BF16
    return {torch.float32: MMA_SPLIT_TF32, torch.float16: MMA_F16}[x.dtype]


def forward(x, geom, affine, weight, bias, groups):
    """out (N, C_out, H, W) in x's dtype and memory format (``op.memory_format_of``: channels-last x
    is read as it is and gives a channels-last out); inputs as in ``reference.deform_conv2d``."""
    fmt = memory_format_of(x)
    x, geom, weight = x.contiguous(memory_format=fmt), geom.contiguous(), weight.contiguous()
    n, c, h, w = x.shape
    c_out, c_in_g, k, _ = weight.shape
    c_out_g = c_out // groups
    out = new_output((n, c_out, h, w), x.dtype, x.device, fmt)
    if out.numel() == 0:
        return out
    depthwise = c_in_g == 1
    mma = _mma_mode(x, c_in_g, c_out_g)
    if mma == FMA:
        block_c, block_ci = _channel_block(c_out if depthwise else c_out_g, 16), 1
    else:
        block_c = _mma_block(c_out_g, 64)
        block_ci = _mma_block(c_in_g, 16 if mma == MMA_SPLIT_TF32 else 32)
    blocks_per_group = triton.cdiv(c_out_g, block_c)
    grid = (
        triton.cdiv(h * w, BLOCK_P),
        triton.cdiv(c_out, block_c) if depthwise else groups * blocks_per_group,
        n,
    )
    _forward_kernel[grid](
        x,
        geom,
        weight,
        bias.contiguous() if bias is not None else x,
        out,
        c,
        c_out,
        h,
        w,
        c_in_g,
        c_out_g,
        blocks_per_group,
        K=k,
        AFFINE=affine,
        DEPTHWISE=depthwise,
        HAS_BIAS=bias is not None,
        CL=fmt == torch.channels_last,
        ACC=_acc(x.dtype),
        MMA=mma,
        BLOCK_C=block_c,
        BLOCK_CI=block_ci,
        BLOCK_P=BLOCK_P,
        num_warps=MMA_WARPS if mma != FMA else _forward_warps(x.device),
    )
    return out


def _forward_warps(device: torch.device) -> int:
    hopper = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
    return HOPPER_FORWARD_WARPS if hopper else 4


def backward(grad_out, x, geom, affine, weight, groups):
    """(dx, dgeom, dweight), each in its input's dtype and shape; dx in x's memory format (grad_out
    and x are read in it: no copy for channels-last x), dgeom and dweight contiguous."""
    fmt = memory_format_of(x)
    grad_out, x, geom, weight = (
        grad_out.contiguous(memory_format=fmt),
        x.contiguous(memory_format=fmt),
        geom.contiguous(),
        weight.contiguous(),
    )
    n, c, h, w = x.shape
    c_out, c_in_g, k, _ = weight.shape
    c_out_g = c_out // groups
    acc_dtype = compute_dtype(x)
    dx = torch.empty(x.shape, dtype=acc_dtype, device=x.device, memory_format=fmt).zero_()
    cl = fmt == torch.channels_last
    dweight = torch.zeros(weight.shape, dtype=acc_dtype, device=x.device)
    dgeom = new_output(geom.shape, geom.dtype, geom.device)
    if n * h * w == 0:  # C = 0 or C_out = 0 still run: the position gradient may be NaN
        return dx.to(x.dtype), dgeom, dweight.to(weight.dtype)
    depthwise = c_in_g == 1
    acc = _acc(x.dtype)
    mma = _mma_mode(x, c_in_g, c_out_g)
    if mma == FMA:
        block_c, block_co = _channel_block(c if depthwise else c_in_g, 16), 1
    else:
        block_c, block_co = _mma_block(c_in_g, 16), _mma_block(c_out_g, 16)
    _input_grad_kernel[(triton.cdiv(h * w, BLOCK_P), n)](
        grad_out,
        x,
        geom,
        weight,
        dx,
        dgeom,
        dweight,
        c,
        c_out,
        h,
        w,
        groups,
        c_in_g,
        c_out_g,
        K=k,
        AFFINE=affine,
        DEPTHWISE=depthwise,
        CL=cl,
        ACC=acc,
        MMA=mma,
        BLOCK_C=block_c,
        BLOCK_CO=block_co,
        BLOCK_P=BLOCK_P,
        num_warps=MMA_WARPS if mma == MMA_SPLIT_TF32 else 4,
    )
    if not depthwise and c_in_g * c_out_g > 0:
        if mma == FMA:
            block_co, block_ci = _channel_block(c_out_g, 16), _channel_block(c_in_g, 16)
        else:
            block_co, block_ci = _mma_block(c_out_g, 64), _mma_block(c_in_g, 32)
        co_blocks, ci_blocks = triton.cdiv(c_out_g, block_co), triton.cdiv(c_in_g, block_ci)
        chunk = min(WEIGHT_CHUNK_PIXELS, triton.cdiv(h * w, WEIGHT_BLOCK_P) * WEIGHT_BLOCK_P)
        grid = (groups * co_blocks * ci_blocks, k * k, n * triton.cdiv(h * w, chunk))
        _weight_grad_kernel[grid](
            grad_out,
            x,
            geom,
            dweight,
            n,
            c,
            c_out,
            h,
            w,
            c_in_g,
            c_out_g,
            co_blocks,
            ci_blocks,
            chunk,
            K=k,
            AFFINE=affine,
            CL=cl,
            ACC=acc,
            MMA=mma,
            BLOCK_CO=block_co,
            BLOCK_CI=block_ci,
            BLOCK_P=WEIGHT_BLOCK_P,
            num_warps=MMA_WARPS if mma != FMA else 4,
        )
    return dx.to(x.dtype), dgeom, dweight.to(weight.dtype)

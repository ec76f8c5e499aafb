"""Pure-PyTorch deformable convolution, stride 1, padding k//2, dilation 1 (the oracle).

Tap geometry (shared by every backend; docs/design.md#deform-conv). For output pixel q=(qy,qx) and tap t=i*k+j the
grid vector is g_t=(i-k//2, j-k//2) as (y,x). The tap samples the input at the absolute position
  affine:  p_t(q) = q + A(q) g_t + b(q),  A = [[A0,A1],[A2,A3]] (row-major), b = (by,bx)
  general: p_t(q) = q + g_t + (offset[2t](q), offset[2t+1](q))   (torchvision's layout)
evaluated left to right exactly as written (``qy + A0*gy + A1*gx + by``). The packed geometry tensor
``geom`` is ``cat([A, b], 1)`` (N,6,H,W) in affine mode and ``offset`` (N,2k²,H,W) in general mode.

Sampling rule (every backend implements exactly this, including where NaN/Inf appear):
  * Non-finite position: if py or px is NaN or ±Inf (from NaN/Inf in A, b, offset, or overflow),
    the tap's sample is NaN in every channel, its position gradient (d/dpy, d/dpx) is NaN (so the
    pixel's dA/db, or the tap's doffset, are NaN), and it adds nothing to dx.
  * Finite position: bilinear over the corners (y0+a, x0+b), a,b in {0,1}, y0=floor(py),
    x0=floor(px), with weights w_ab = (a ? ly : 1-ly)(b ? lx : 1-lx), ly=py-y0, lx=px-x0. A corner
    outside the image contributes exactly zero: it is never read nor written, so NaN/Inf on the
    border cannot leak into out-of-image samples. Every in-image corner is read and multiplied by
    its weight even when that weight is 0 (NaN*0 = NaN, as in torchvision). Before the conversion
    to an integer index, (y0, x0) is clamped to [-2, H+1] x [-2, W+1]: every corner of a clamped
    cell is outside the image, so huge finite positions keep their zero sample and zero-valued
    derivative, without an undefined float->int conversion.
  * Formulas (per sample n, tap t, pixel q; dcol[c] = sum_o weight[o,c,t] * grad_out[o] over the
    output channels o of c's group, i.e. the column gradient):
      sample[c]  = bad + sum_ab w_ab * x[c, corner_ab]        (in-image corners only)
      dvy[c]     = sum_ab (dw_ab/dpy) * x[c, corner_ab],  dvx likewise
      d/dpy      = bad + sum_c dcol[c] * dvy[c],   d/dpx = bad + sum_c dcol[c] * dvx[c]
      dx[c, corner_ab] += dcol[c] * w_ab                     (in-image corners of finite taps)
    where bad is NaN for a non-finite position and 0 otherwise. The kernels evaluate the position
    gradient in this grouping (column gradient times the derivative of the sample), so ±Inf in
    weight, x or grad_out give the same NaN/±Inf pattern everywhere (barring finite partial sums
    that overflow in one summation order and not in another). The output is
    bias + sum_{c,t} weight * sample and dweight = sum_{n,q} grad_out * sample: NaN/Inf in weight,
    bias and x propagate by that ordinary arithmetic, in the output and in every gradient.
  * The position gradient is the derivative within the cell floor() picks, so it jumps where a
    coordinate crosses an integer (at an integer, the cell that starts there). Positions computed in
    float32 can round onto or off an integer that float64 misses or hits (1.99999993 -> 2.0), and
    the gradients then differ by a corner difference; the tests' random geometry keeps positions
    1e-3 from integers (tests/deform_conv_cases.py), exact integers have their own tests.
  * Empty N, C, C_out, H or W give empty (or all-zero, e.g. dweight for N=0) results, no error.

torchvision (``torchvision.ops.deform_conv2d``) agrees on finite inputs and on the NaN mask of NaN
in x (zero-weight corners included), except that it returns 0 for a coordinate exactly -1 without
reading row/column 0 (weight 0 there; here NaN*0 = NaN). It differs for non-finite offsets
(measured with its CPU kernels): an Inf offset samples zero there (NaN here), only one of the tap's two offset gradients
becomes NaN (both here), and a NaN position is converted to an integer index, undefined behaviour
that returned NaN in one run and crashed another.

Half inputs are computed in float32 and the result cast back; float64 stays float64.
"""

from __future__ import annotations

import torch

from .._checks import compute_dtype


def tap_grid(k: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(k², 2) grid vectors (gy, gx), tap t = i*k + j."""
    r = torch.arange(k, device=device, dtype=dtype) - k // 2
    gy, gx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([gy.reshape(-1), gx.reshape(-1)], dim=1)


def sample_positions(geom: torch.Tensor, k: int, affine: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sampling positions (py, px), each (N, k², H, W)."""
    n, _, h, w = geom.shape
    g = tap_grid(k, geom.device, geom.dtype)
    gy = g[:, 0].view(1, -1, 1, 1)
    gx = g[:, 1].view(1, -1, 1, 1)
    qy = torch.arange(h, device=geom.device, dtype=geom.dtype).view(1, 1, h, 1)
    qx = torch.arange(w, device=geom.device, dtype=geom.dtype).view(1, 1, 1, w)
    if affine:
        a0, a1, a2, a3, by, bx = (geom[:, i : i + 1] for i in range(6))
        return qy + a0 * gy + a1 * gx + by, qx + a2 * gy + a3 * gx + bx
    return qy + gy + geom[:, 0::2], qx + gx + geom[:, 1::2]


def _corners(py: torch.Tensor, px: torch.Tensor, h: int, w: int):
    """The sampling rule's geometry for positions (N,T,H',W'): ``bad`` (NaN where the position is
    not finite, else 0) and per corner ab (flat index clamped into the image, in-image mask,
    weight, d weight/dpy, d weight/dpx)."""
    finite = torch.isfinite(py) & torch.isfinite(px)
    fy, fx = torch.floor(py), torch.floor(px)
    ly, lx = torch.where(finite, py - fy, 0), torch.where(finite, px - fx, 0)
    y0 = torch.where(finite, fy, -2).clamp(-2, h + 1).long()
    x0 = torch.where(finite, fx, -2).clamp(-2, w + 1).long()
    bad = torch.where(finite, 0.0, float("nan")).to(py.dtype)
    corners = []
    for a in (0, 1):
        for b in (0, 1):
            yy, xx = y0 + a, x0 + b
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            wy_, wx_ = (ly if a else 1 - ly), (lx if b else 1 - lx)
            dy_, dx_ = (1.0 if a else -1.0), (1.0 if b else -1.0)
            idx = torch.where(inside, yy * w + xx, 0)
            corners.append((idx, inside, wy_ * wx_, dy_ * wx_, wy_ * dx_))
    return bad, corners


def _flat_index(idx: torch.Tensor, c: int) -> torch.Tensor:
    """idx (N,T,H',W') -> (N,C,T*H'*W'), the same indices for every channel."""
    m = torch.Size(idx.shape[1:]).numel()
    return idx.reshape(idx.shape[0], 1, m).expand(idx.shape[0], c, m)


def _gather(flat: torch.Tensor, idx: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """flat (N,C,HW) at idx (N,T,H',W') -> (N,C,T,H',W'), exactly zero where not ``inside``."""
    n, c = flat.shape[:2]
    vals = flat.gather(2, _flat_index(idx, c)).view(n, c, *idx.shape[1:])
    return torch.where(
        inside.unsqueeze(1), vals, torch.zeros((), dtype=vals.dtype, device=vals.device)
    )


class _BilinearZero(torch.autograd.Function):
    """The sampling rule with its explicit gradients (the formulas of the module docstring)."""

    @staticmethod
    def forward(ctx, x, py, px):
        n, c, h, w = x.shape
        bad, corners = _corners(py, px, h, w)
        flat = x.reshape(n, c, h * w)
        out = bad.unsqueeze(1).expand(n, c, *py.shape[1:])
        for idx, inside, wgt, _, _ in corners:
            out = out + wgt.unsqueeze(1) * _gather(flat, idx, inside)
        ctx.save_for_backward(x, py, px)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dcol):
        x, py, px = ctx.saved_tensors
        n, c, h, w = x.shape
        bad, corners = _corners(py, px, h, w)
        flat = x.reshape(n, c, h * w)
        dvy = dvx = torch.zeros_like(dcol)
        dx = torch.zeros_like(flat)
        for idx, inside, wgt, wy, wx in corners:
            vals = _gather(flat, idx, inside)
            dvy = dvy + wy.unsqueeze(1) * vals
            dvx = dvx + wx.unsqueeze(1) * vals
            contrib = torch.where(
                inside.unsqueeze(1), dcol * wgt.unsqueeze(1), torch.zeros((), dtype=dx.dtype)
            )
            dx.scatter_add_(
                2, _flat_index(idx, c), contrib.reshape(n, c, torch.Size(py.shape[1:]).numel())
            )
        gpy = bad + (dcol * dvy).sum(1)
        gpx = bad + (dcol * dvx).sum(1)
        return dx.view(n, c, h, w), gpy, gpx


def bilinear_zero(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Sample x (N,C,H,W) at (py, px) (N,T,H',W') -> (N,C,T,H',W') by the sampling rule above."""
    return _BilinearZero.apply(x, py, px)


def deform_conv2d(
    x: torch.Tensor,
    geom: torch.Tensor,
    affine: bool,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
) -> torch.Tensor:
    """Deformable convolution on packed geometry; differentiable in every tensor argument."""
    dtype = compute_dtype(x, geom, weight, bias)
    out_dtype = x.dtype
    x, geom, weight = x.to(dtype), geom.to(dtype), weight.to(dtype)
    n, c, h, w = x.shape
    c_out, c_in_g, k, _ = weight.shape
    py, px = sample_positions(geom, k, affine)
    cols = bilinear_zero(x, py, px)  # (N, C, K, H, W)
    cols = cols.reshape(n, groups, c_in_g * k * k, h * w)
    wg = weight.reshape(groups, c_out // groups, c_in_g * k * k)
    out = torch.einsum("gok,ngkp->ngop", wg, cols).reshape(n, c_out, h, w)
    if bias is not None:
        out = out + bias.to(dtype).view(1, -1, 1, 1)
    return out.to(out_dtype)

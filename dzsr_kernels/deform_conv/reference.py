"""Pure-PyTorch deformable convolution, stride 1, padding k//2, dilation 1 (the oracle).

Tap geometry (shared by every backend; SPEC §1a). For output pixel q=(qy,qx) and tap t=i*k+j the
grid vector is g_t=(i-k//2, j-k//2) as (y,x). The tap samples the input at the absolute position
  affine:  p_t(q) = q + A(q) g_t + b(q),  A = [[A0,A1],[A2,A3]] (row-major), b = (by,bx)
  general: p_t(q) = q + g_t + (offset[2t](q), offset[2t+1](q))   (torchvision's layout)
Sampling is bilinear; each of the four corners outside the image reads zero, so the position
gradient is the derivative of that four-corner formula. The packed geometry tensor ``geom`` is
``cat([A, b], 1)`` (N,6,H,W) in affine mode and ``offset`` (N,2k²,H,W) in general mode.

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


def bilinear_zero(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Sample x (N,C,H,W) at (py, px) (N,T,H',W') -> (N,C,T,H',W'); corners outside read zero."""
    n, c, h, w = x.shape
    y0f = torch.floor(py)
    x0f = torch.floor(px)
    ly, lx = py - y0f, px - x0f
    y0, x0 = y0f.long(), x0f.long()
    flat = x.reshape(n, c, h * w)
    out = 0
    for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(n, 1, -1).expand(n, c, -1)
        vals = flat.gather(2, idx).view(n, c, *py.shape[1:])
        out = out + vals * (wgt * valid).unsqueeze(1)
    return out


def deform_conv2d(
    x: torch.Tensor, geom: torch.Tensor, affine: bool, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
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

"""ONNX translations (opset 19, onnxscript) for ``dzsr.export`` and the graph helpers they share.

``dzsr.export.onnx_program`` passes them to ``torch.onnx.export(..., dynamo=True,
custom_translation_table=...)``, which replaces each call of these torch ops by the ONNX nodes
below (docs/design.md#export):

* ``torch.ops.dzsr.deform_conv2d_packed`` (the deformable convolutions, ``dzsr_kernels``): one
  standard ``DeformConv`` node. In affine mode (the AdaSTN, geometry ``cat([A, b], 1)`` (N,6,H,W))
  its offsets (N,2k²,H,W) are built in-graph by a constant 1x1 convolution,
  ``offset_t = A g_t + b - g_t`` interleaved (dy, dx) (docs/design.md#deform-conv); in general
  mode the offsets are the op's own.
* ``torch.ops.aten.upsample_bilinear2d.vec`` with aligned corners (the extractor's 1/4 resize,
  the predictor's resizes): gathers and a lerp that place the source positions as PyTorch does.
  ONNX ``Resize`` rounds them differently, enough to move the extractor's features by ~1e-4
  (relative) and so to flip near-tie matches (measured on noise at LR 344x556).
* ``torch.ops.dzsr.matching_offsets``: ``dzsr.onnx_matching``.
"""

from __future__ import annotations

import numpy as np
import onnxscript
from onnxscript import opset19 as op
from onnxscript.function_libs.torch_lib.ops import nn as torchlib_nn

from dzsr_kernels.deform_conv.reference import tap_grid


def const(values, dtype) -> onnxscript.ir.Value:
    """A constant tensor of ``values`` (a scalar stays 0-d) in numpy ``dtype``."""
    return op.Constant(value=onnxscript.ir.tensor(np.asarray(values, dtype=dtype)))


def ints(*values: int):
    """An int64 constant of shape (len(values),)."""
    return const(list(values), np.int64)


def dim(x, axis: int):
    """Size of ``x`` along ``axis``, an int64 tensor of shape (1,)."""
    return op.Shape(x, start=axis, end=axis + 1)


def scalar(v):
    """A (1,) tensor as a scalar (0-d)."""
    return op.Squeeze(v, ints(0))


def arange(n):
    """0, 1, ..., n-1 for a (1,) int64 size ``n``."""
    return op.Range(const(0, np.int64), scalar(n), const(1, np.int64))


def to_float(x):
    """``x`` cast to float32."""
    return op.Cast(x, to=onnxscript.ir.DataType.FLOAT)


def to_double(x):
    """``x`` cast to float64."""
    return op.Cast(x, to=onnxscript.ir.DataType.DOUBLE)


def affine_offset_conv(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight (2k²,6,1,1) and bias (2k²,) of the 1x1 convolution taking the AdaSTN geometry
    ``[A0, A1, A2, A3, by, bx]`` to torchvision-layout offsets: channel 2t is
    ``A0 gy + A1 gx + by - gy`` and 2t+1 is ``A2 gy + A3 gx + bx - gx`` for tap t's grid vector
    (gy, gx) (docs/design.md#deform-conv)."""
    grid = tap_grid(k).numpy()
    weight = np.zeros((2 * k * k, 6, 1, 1), np.float32)
    bias = -grid.reshape(-1).astype(np.float32)  # (-gy_0, -gx_0, -gy_1, ...)
    for t, (gy, gx) in enumerate(grid):
        weight[2 * t, [0, 1, 4], 0, 0] = gy, gx, 1.0
        weight[2 * t + 1, [2, 3, 5], 0, 0] = gy, gx, 1.0
    return weight, bias


def deform_conv2d_packed(x, geom, affine: bool, weight, bias, groups: int, backend: str):
    """``dzsr::deform_conv2d_packed`` as ``DeformConv`` (stride 1, padding k//2); ``backend``
    only chose the PyTorch kernel and plays no part here."""
    k = weight.shape[2]
    if not isinstance(k, int):
        raise ValueError(f"deformable-conv weight needs a static kernel size, got {weight.shape}")
    offset = geom
    if affine:
        w, b = affine_offset_conv(k)
        offset = op.Conv(geom, const(w, np.float32), const(b, np.float32))
    inputs = [x, weight, offset] + ([bias] if bias is not None else [])
    return op.DeformConv(
        *inputs,
        group=groups,
        offset_group=1,
        kernel_shape=[k, k],
        pads=[k // 2] * 4,
        strides=[1, 1],
        dilations=[1, 1],
    )


def _corner_weights(n_in, n_out):
    """Bilinear resampling of an axis of length ``n_in`` (1,) to ``n_out`` with corners aligned,
    computed as PyTorch's CPU kernel does: scale = float(n_in-1) / float(n_out-1), source
    position scale·i, i0 = min(floor(·), n_in-1), i1 = min(i0+1, n_in-1), weights 1-λ and λ,
    λ = clamp(position - i0, 0, 1). (ONNX ``Resize`` computes the position as i·(n_in-1)/(n_out-1),
    which differs in its last bits; where a flow jumps by ~100 px between matches, that moves an
    offset by ~0.01 px.) Returns (i0, i1, w0, w1), each of length n_out."""
    one = ints(1)
    last = op.Sub(n_in, one)
    # n_out = 1: scale (n_in-1)/1 at position 0, i.e. source 0, as PyTorch's scale 0 gives
    scale = op.Div(to_float(last), to_float(op.Max(op.Sub(n_out, one), one)))
    pos = op.Mul(scale, to_float(arange(n_out)))
    i0 = op.Min(op.Cast(op.Floor(pos), to=onnxscript.ir.DataType.INT64), last)
    i1 = op.Min(op.Add(i0, one), last)
    lam = op.Clip(op.Sub(pos, to_float(i0)), const(0.0, np.float32), const(1.0, np.float32))
    return i0, i1, op.Sub(const(1.0, np.float32), lam), lam


def resize_aligned(x, height, width):
    """(1,C,H,W) -> (1,C,height,width) ((1,) int64 sizes), bilinear with aligned corners
    (``_corner_weights``): ``h0·(w0·x00 + w1·x01) + h1·(w0·x10 + w1·x11)``, PyTorch's order of
    operations."""
    y0, y1, h0, h1 = _corner_weights(dim(x, 2), height)
    x0, x1, w0, w1 = _corner_weights(dim(x, 3), width)
    h0, h1 = (op.Unsqueeze(h, ints(1)) for h in (h0, h1))

    def along_x(rows):
        left, right = op.Gather(rows, x0, axis=3), op.Gather(rows, x1, axis=3)
        return op.Add(op.Mul(w0, left), op.Mul(w1, right))

    top, bottom = along_x(op.Gather(x, y0, axis=2)), along_x(op.Gather(x, y1, axis=2))
    return op.Add(op.Mul(h0, top), op.Mul(h1, bottom))


def upsample_bilinear2d_vec(x, output_size, align_corners: bool, scale_factors):
    """``aten::upsample_bilinear2d.vec`` (``F.interpolate(..., mode="bilinear")``): with aligned
    corners, the model's only use, ``resize_aligned`` to ``output_size`` or to
    floor(size·factor); otherwise torch.onnx's own translation (``Resize``)."""
    if not align_corners:
        return torchlib_nn.aten_upsample_bilinear2d_vec(
            x, output_size, align_corners, scale_factors
        )
    if output_size is not None:
        size = op.Cast(output_size, to=onnxscript.ir.DataType.INT64)
        height, width = op.Slice(size, ints(0), ints(1)), op.Slice(size, ints(1), ints(2))
    else:  # floor(size * factor), in double as PyTorch computes it
        height, width = (
            op.Cast(
                op.Floor(op.Mul(to_double(dim(x, axis)), const(factor, np.float64))),
                to=onnxscript.ir.DataType.INT64,
            )
            for axis, factor in zip((2, 3), scale_factors)
        )
    return resize_aligned(x, height, width)

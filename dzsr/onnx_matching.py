"""ONNX translation (opset 19, onnxscript) of ``dzsr::matching_offsets`` (``dzsr.export``).

The model's matching, ``dzsr.models.reference_branch.matching_offsets``, from the extractor's
features (1,C,h,w) to the deformable-conv offsets (1,18,4h,4w), as ``dzsr_kernels.patch_match``
and its ``flow.py`` define it (docs/design.md#patch-match): pixel normalisation, the top-1 3x3
patch search as an ONNX ``Loop`` over chunks of reference patches (each chunk a ``Conv`` of the
query with those patches as filters, at most ``chunk_elements`` scores alive at once), then
index -> flow -> the 9 shifted copies -> bilinear x4 upsampling (docs/design.md#export). Batch
size 1; finite features only (the non-finite rule of ``patch_match`` is not reproduced).
"""

from __future__ import annotations

import numpy as np
import onnxscript
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op18
from onnxscript import opset19 as op

from dzsr_kernels.patch_match.flow import PATCH
from dzsr_kernels.patch_match.reference import CHUNK_ELEMENTS, NORM_EPS

from .onnx_ops import arange, const, dim, ints, resize_aligned, scalar, to_float

# torch.onnx builds the graph in opset 18 (torchlib's) and converts it to opset 19 afterwards: a
# scripted function (the Loop) must be written against that opset to be inlined.
BUILD_OPSET = op18
MATCH_SCALE = 4  # the extractor's features are 1/4 of the image grid


def _normalise(x):
    """Pixels (1,C,H,W) times 1 / max(||x||, NORM_EPS) over C (as ``normalise_pixels`` rounds)."""
    norm = op.ReduceL2(x, ints(1), keepdims=1)
    return op.Mul(x, op.Reciprocal(op.Max(norm, const(NORM_EPS, np.float32))))


def _inverse_patch_norms(u):
    """Normalised pixels (1,C,H,W) -> 1/|P| of each 3x3 patch (1,1,H-2,W-2), 0 where |P| = 0."""
    norm = op.ReduceL2(u, ints(1), keepdims=1)
    ones = const(np.ones((1, 1, PATCH, PATCH)), np.float32)
    patch = op.Sqrt(op.Conv(op.Mul(norm, norm), ones))
    zero = const(0.0, np.float32)
    return op.Where(op.Equal(patch, zero), zero, op.Reciprocal(patch))


@onnxscript.script(BUILD_OPSET)
def _top1_loop(
    uq: FLOAT[...],
    ur_flat: FLOAT[...],
    inv_r: FLOAT[...],
    taps: INT64[...],
    filter_shape: INT64[...],
    wr: INT64,
    wpr: INT64,
    n_ref: INT64,
    chunk: INT64,
    n_chunks: INT64,
    best: FLOAT[...],
    index: INT64[...],
) -> INT64[...]:
    """The search. For each chunk of ``chunk`` reference patches (indices clipped to the last
    one, n_ref - 1, whose repeats come after it and so never win a tie): gather the patches from
    ``ur_flat`` (C,Hr*Wr) at their top-left flat position plus ``taps`` (p², the flat offsets of
    a patch's pixels) as filters of ``filter_shape`` (chunk,C,p,p); score every query patch of
    ``uq`` (1,C,Hq,Wq) against them with a Conv, times their inverse norms ``inv_r`` (Npr,); keep
    the running ``best`` score and its first ``index`` (1,Hq-p+1,Wq-p+1), ties to the smallest."""
    one = op18.Constant(value_int=1)
    last = op18.Sub(n_ref, one)
    per_patch = op18.Constant(value_ints=[1, -1, 1, 1])
    for i in range(n_chunks):
        start = op18.Mul(i, chunk)
        ids = op18.Min(op18.Range(start, op18.Add(start, chunk), one), last)
        top_left = op18.Add(op18.Mul(op18.Div(ids, wpr), wr), op18.Mod(ids, wpr))
        pixels = op18.Add(op18.Unsqueeze(top_left, [1]), taps)  # (chunk, p²)
        cols = op18.Gather(ur_flat, pixels, axis=1)  # (C, chunk, p²)
        filters = op18.Reshape(op18.Transpose(cols, perm=[1, 0, 2]), filter_shape)
        weights = op18.Reshape(op18.Gather(inv_r, ids), per_patch)
        scores = op18.Mul(op18.Conv(uq, filters), weights)  # (1, chunk, Hq-p+1, Wq-p+1)
        top = op18.ReduceMax(scores, op18.Constant(value_ints=[1]), keepdims=0)
        arg = op18.Add(op18.ArgMax(scores, axis=1, keepdims=0), start)
        better = op18.Greater(top, best)
        best = op18.Where(better, top, best)
        index = op18.Where(better, arg, index)
    return index


def _flow_offsets(index, hq, wq, wpr):
    """Index (1,Hq-2,Wq-2) into a reference patch grid ``wpr`` wide -> offsets (1,18,4Hq,4Wq):
    ``match_flow`` (flow = reference minus query patch position, padded by 2 bottom/right), then
    ``flow_to_offsets`` (the 9 copies shifted by (i, j), bilinear x4 with corners aligned, x4)."""
    margin = ints(PATCH - 1)
    ys = op.Unsqueeze(arange(op.Sub(hq, margin)), ints(1))
    xs = arange(op.Sub(wq, margin))
    fy = op.Sub(op.Div(index, wpr), ys)
    fx = op.Sub(op.Mod(index, wpr), xs)
    flow = to_float(op.Concat(op.Unsqueeze(fy, ints(1)), op.Unsqueeze(fx, ints(1)), axis=1))
    flow = op.Pad(flow, ints(0, 0, 0, 0, 0, 0, PATCH - 1, PATCH - 1))
    size = op.Concat(hq, wq, axis=0)
    copies = [
        op.Slice(op.Pad(flow, ints(0, 0, i, j, 0, 0, 0, 0)), ints(0, 0), size, ints(2, 3))
        for i in range(PATCH)
        for j in range(PATCH)
    ]
    offsets = op.Concat(*copies, axis=1)
    scale = ints(MATCH_SCALE)
    up = resize_aligned(offsets, op.Mul(hq, scale), op.Mul(wq, scale))
    return op.Mul(up, const(float(MATCH_SCALE), np.float32))


def matching_offsets_chunked(chunk_elements: int = CHUNK_ELEMENTS):
    """The translation of ``dzsr::matching_offsets`` with at most ``chunk_elements`` scores per
    Loop iteration (at least one reference patch per iteration)."""

    def matching_offsets(query_features, ref_features):
        """Features (1,C,Hq,Wq), (1,C,Hr,Wr) -> offsets (1,18,4Hq,4Wq)."""
        return _matching_offsets(query_features, ref_features, chunk_elements)

    return matching_offsets


def _matching_offsets(query_features, ref_features, chunk_elements: int):
    uq, ur = _normalise(query_features), _normalise(ref_features)
    channels, hq, wq = dim(uq, 1), dim(uq, 2), dim(uq, 3)
    wr = dim(ur, 3)
    margin = ints(PATCH - 1)
    hpq, wpq, hpr, wpr = (op.Sub(d, margin) for d in (hq, wq, dim(ur, 2), wr))
    n_ref = op.Mul(hpr, wpr)
    per_budget = op.Max(op.Div(ints(chunk_elements), op.Mul(hpq, wpq)), ints(1))
    chunk = op.Min(per_budget, n_ref)  # no more patches per iteration than there are
    n_chunks = op.Div(op.Sub(op.Add(n_ref, chunk), ints(1)), chunk)  # ceil(n_ref / chunk)
    ur_flat = op.Reshape(op.Squeeze(ur, ints(0)), op.Concat(channels, ints(-1), axis=0))
    inv_r = op.Reshape(_inverse_patch_norms(ur), ints(-1))
    rows = const([i for i in range(PATCH) for _ in range(PATCH)], np.int64)
    cols = const([j for _ in range(PATCH) for j in range(PATCH)], np.int64)
    taps = op.Add(op.Mul(rows, scalar(wr)), cols)
    filter_shape = op.Concat(ints(-1), channels, ints(PATCH, PATCH), axis=0)
    grid = op.Concat(ints(1), hpq, wpq, axis=0)
    best = op.Expand(const(-np.inf, np.float32), grid)
    index = op.Expand(const(0, np.int64), grid)
    index = _top1_loop(
        uq,
        ur_flat,
        inv_r,
        taps,
        filter_shape,
        scalar(wr),
        scalar(wpr),
        scalar(n_ref),
        scalar(chunk),
        scalar(n_chunks),
        best,
        index,
    )
    return _flow_offsets(index, hq, wq, scalar(wpr))

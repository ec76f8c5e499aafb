"""Public top-1 patch matching op, its validation and its ``torch.library`` registration.

The fast backends run through the custom op ``torch.ops.dzsr.patch_match`` (backend name as an
argument, like the deform-conv op); the ``reference`` backend runs ``reference.patch_match``
directly. Matching is not differentiable: the outputs never require grad (the model calls it under
``no_grad``), and the op registers no autograd formula.

Backend kernel interface (``cpp`` and ``triton`` modules), on the inputs built by
``reference.prepare`` in float32:
  match(uq (N,Hq,Wq,C), ur (N,Hr,Wr,C), inv_q (N,Hpq,Wpq), inv_r (N,Hpr,Wpr), p, precision)
      -> (score float32 (N,Hpq,Wpq), index int64 (N,Hpq,Wpq))
``precision`` is "float32" (exact float32 products, every backend) or "tf32" (Triton only: TF32
tensor-core dot products, faster on GPU, agreement rate in BENCHMARKS.md).
"""
from __future__ import annotations

import torch

from .. import _backend
from .._checks import check_match, check_same_device, check_tensor
from . import reference

OP = "patch_match"
PRECISIONS = ("float32", "tf32")
_backend.register_op(OP, {"reference", "cpp", "triton"})


def _kernels(backend: str):
    return _backend.kernel_module(__package__, backend)


@torch.library.custom_op("dzsr::patch_match", mutates_args=())
def _patch_match(
    query: torch.Tensor, ref: torch.Tensor, patch_size: int, precision: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    prepared = reference.prepare(query, ref, patch_size, torch.float32)
    return _kernels(backend).match(*prepared, patch_size, precision)


@_patch_match.register_fake
def _(query, ref, patch_size, precision, backend):
    shape = (query.shape[0], query.shape[2] - patch_size + 1, query.shape[3] - patch_size + 1)
    return query.new_empty(shape, dtype=torch.float32), query.new_empty(shape, dtype=torch.int64)


def _validate(query, ref, patch_size) -> None:
    check_tensor("query", query, 4, "(N, C, Hq, Wq)")
    check_tensor("ref", ref, 4, "(N, C, Hr, Wr)")
    check_match(("query", "ref"), (query, ref), (0, 1), "(N, C)")
    check_same_device(query=query, ref=ref)
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd int, got {patch_size!r}")
    for name, t in (("query", query), ("ref", ref)):
        if t.shape[2] < patch_size or t.shape[3] < patch_size:
            raise ValueError(
                f"{name} must be at least patch_size x patch_size = {patch_size}x{patch_size} spatially, "
                f"got shape {tuple(t.shape)}"
            )
    if query.shape[0] == 0 or query.shape[1] == 0:
        raise ValueError(f"query and ref need N >= 1 and C >= 1, got query shape {tuple(query.shape)}")


def patch_match(
    query: torch.Tensor, ref: torch.Tensor, patch_size: int = 3, *, precision: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 patch-correlation matching of every query patch against every reference patch.

    query (N,C,Hq,Wq), ref (N,C,Hr,Wr), any float dtype (computed in float32; float64 inputs in
    float64 on the reference backend). Pixels are L2-normalised over C (all-zero pixels stay zero);
    a patch is the patch_size² normalised pixels concatenated, its top-left pixel giving its position.
    Returns ``score`` float32 (N, Hq-p+1, Wq-p+1), the cosine similarity of the best pair (0 for a
    patch whose pixels are all zero), and ``index`` int64 of the same shape, the best reference patch
    flattened row-major over the (Hr-p+1)x(Wr-p+1) patch grid, ties to the smallest index.
    Not differentiable: the outputs never require grad. ``precision="tf32"`` (Triton backend only)
    trades exact float32 dot products for TF32 tensor-core ones.
    """
    _validate(query, ref, patch_size)
    backend = _backend.resolve(OP, query.device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "tf32" and backend != "triton":
        raise ValueError(f"precision='tf32' needs the triton backend, the {backend!r} backend computes in float32")
    with torch.no_grad():
        if backend == "reference":
            return reference.patch_match(query, ref, patch_size)
        return _patch_match(query, ref, patch_size, precision, backend)

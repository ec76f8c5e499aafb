"""Public top-1 patch matching op, its validation and its ``torch.library`` registration.

The fast backends run through the custom op ``torch.ops.dzsr.patch_match`` (backend name as an
argument, like the deform-conv op); the ``reference`` backend runs ``reference.patch_match``
directly. Both go through ``reference.prepare`` and ``reference.match_prepared``, which hand the
kernel finite inputs and apply the non-finite rule (see ``reference``) to its result. Matching is not
differentiable: the outputs never require grad (the model calls it under ``no_grad``), and the op
registers no autograd formula.

Backend kernel interface (``cpp_kernel`` and ``triton_kernel``, looked up in ``KERNELS``), on
finite inputs as built by ``reference.prepare`` in float32:
  match(uq (N,Hq,Wq,C), ur (N,Hr,Wr,C), inv_q (N,Hpq,Wpq), inv_r (N,Hpr,Wpr), p, precision)
      -> (score float32 (N,Hpq,Wpq), index int64 (N,Hpq,Wpq)), both contiguous, whatever the
         layout of the op's inputs (the fake returns the same); N = 0 gives empty outputs.
``precision`` is "exact" (float32 products and sums, every backend) or "fast" (Triton only: split
TF32 tensor-core products, contract in ``precision``), the public aliases already resolved.
"""

from __future__ import annotations

import functools

import torch

from .. import _backend
from .._checks import check_match, check_same_device, check_tensor
from . import cpp_kernel, reference
from .precision import ALIASES, PRECISIONS, canonical

OP = "patch_match"
ACCEPTED = (*PRECISIONS, *ALIASES)


def _triton_kernel():
    """``triton_kernel``, imported on first use (why: ``dzsr_kernels._backend``)."""
    from . import triton_kernel

    return triton_kernel


# Backend name -> the module holding its kernels (interface above), called by the custom ops below;
# ``reference`` has no entry: ``reference.patch_match`` runs without a custom op.
KERNELS = {"cpp": lambda: cpp_kernel, "triton": _triton_kernel}
_backend.register_op(OP, {"reference", *KERNELS})


@torch.library.custom_op("dzsr::patch_match", mutates_args=())
def _patch_match(
    query: torch.Tensor, ref: torch.Tensor, patch_size: int, precision: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = functools.partial(KERNELS[backend]().match, precision=precision)
    return reference.match_prepared(
        *reference.prepare(query, ref, patch_size, torch.float32), patch_size, kernel
    )


@_patch_match.register_fake
def _(query, ref, patch_size, precision, backend):
    """Contiguous (N, Hq-p+1, Wq-p+1) float32 score and int64 index, like every kernel."""
    shape = (query.shape[0], query.shape[2] - patch_size + 1, query.shape[3] - patch_size + 1)
    return query.new_empty(shape, dtype=torch.float32), query.new_empty(shape, dtype=torch.int64)


def _validate(query, ref, patch_size, precision) -> None:
    """One clear TypeError/ValueError naming the argument for every malformed call."""
    check_tensor("query", query, 4, "(N, C, Hq, Wq)")
    check_tensor("ref", ref, 4, "(N, C, Hr, Wr)")
    for name, t in (("query", query), ("ref", ref)):
        if t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if query.dtype != ref.dtype:
        raise TypeError(
            f"query and ref must share one dtype, got query {query.dtype} and ref {ref.dtype}"
        )
    check_match(("query", "ref"), (query, ref), (0, 1), "(N, C)")
    check_same_device(query=query, ref=ref)
    if not isinstance(patch_size, int) or isinstance(patch_size, bool):
        raise TypeError(f"patch_size must be an int, got {type(patch_size).__name__}")
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd int, got {patch_size!r}")
    if query.shape[1] == 0:
        raise ValueError(
            f"query and ref need C >= 1 channels (a pixel without channels has no direction "
            f"to match), got query shape {tuple(query.shape)}"
        )
    for name, t in (("query", query), ("ref", ref)):
        if t.shape[2] < patch_size or t.shape[3] < patch_size:
            raise ValueError(
                f"{name} must be at least patch_size x patch_size = {patch_size}x{patch_size} spatially, "
                f"got shape {tuple(t.shape)}"
            )
    if not isinstance(precision, str):
        raise TypeError(
            f"precision must be a str, one of {ACCEPTED}, got {type(precision).__name__}"
        )
    if precision not in ACCEPTED:
        raise ValueError(f"precision must be one of {ACCEPTED}, got {precision!r}")


def patch_match(
    query: torch.Tensor, ref: torch.Tensor, patch_size: int = 3, *, precision: str = "exact"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 patch-correlation matching of every query patch against every reference patch.

    query (N,C,Hq,Wq), ref (N,C,Hr,Wr), one float dtype, any layout, N >= 0, C >= 1, both maps at
    least patch_size (odd) on each side; computed in float32 (float64 inputs in float64 on the
    reference backend). Pixels are L2-normalised over C, ``x / max(||x||, 1e-12)`` with an
    overflow-free norm (all-zero pixels stay zero); a patch is the patch_size² normalised pixels
    concatenated, its top-left pixel giving its position. Returns ``score`` float32
    (N, Hq-p+1, Wq-p+1), the cosine similarity of the best pair (0 for a patch whose pixels are all
    zero), and ``index`` int64 of the same shape, the best reference patch flattened row-major over
    the (Hr-p+1)x(Wr-p+1) patch grid, ties to the smallest index; both contiguous.

    Non-finite values follow ``torch.max`` (NaN is the largest score): a pixel with a NaN or ±Inf
    channel normalises to NaN, a patch containing one scores NaN against every patch of the other map.
    Per sample, a query patch containing one gets (NaN, 0); else, if some reference patch contains
    one, every query patch gets NaN and the smallest such reference index. ``index`` always lies in
    [0, (Hr-p+1)(Wr-p+1)). N = 0 gives empty outputs.

    Not differentiable: the outputs never require grad.

    ``precision`` (docs/design.md#patch-match): ``"exact"`` (default, every backend): float32
    products and sums, the reference's float32 results up to the summation order. ``"fast"``
    (Triton backend only): products on the tensor cores as split TF32 (each normalised pixel
    value split into two TF32 values, three TF32 products per pair: ``precision``) with float32
    accumulation, the running top-1 kept on chip, memory O(Nq + Nr); every score within
    ``precision.fast_score_error_bound(C, p)`` (9.6e-4 at C = 256, p = 3; measured below 1e-6)
    of the exact one, the index the exact one wherever the best match beats the runner-up by
    twice that (measured on the bundled samples' real features: all equal, BENCHMARKS.md).
    ``"float32"`` and ``"tf32"`` are the older names of ``"exact"`` and ``"fast"``, still
    accepted. The non-finite and empty-input rules above hold for both.
    """
    _validate(query, ref, patch_size, precision)
    precision = canonical(precision)
    backend = _backend.resolve(OP, query.device)
    if precision == "fast" and backend != "triton":
        raise ValueError(
            f"precision='fast' needs the triton backend, the {backend!r} backend computes exactly "
            "in float32 (use precision='exact' or dzsr_kernels.use_backend('triton'))"
        )
    with torch.no_grad():
        if backend == "reference":
            return reference.patch_match(query, ref, patch_size)
        return _patch_match(query, ref, patch_size, precision, backend)

"""Public local sliced-Wasserstein (LOSW) loss, its validation and its ``torch.library`` ops.

``local_sliced_wasserstein_loss`` checks its arguments (u, v, proj and generator exactly as the
global ``sliced_wasserstein_loss`` does, plus window and stride), draws the projections when none
are given and dispatches to a backend. ``reference`` runs the differentiable PyTorch oracle
(``reference.py``) directly, and so does ``cpp`` where its fused forward does not run the case
(``cpp_kernel.supports``: on CUDA, windows whose band of window x W pixels exceeds the kernel's
shared memory; docs/design.md#local-sliced-wasserstein). The C++ CPU and CUDA kernels are reached
through two custom ops that carry the backend name as an argument:

  ``dzsr::local_sliced_wasserstein_forward(u, v, proj, window, stride, need_v_count, backend)
  -> (loss, count_u, count_v)``
      loss: 0-dim, compute dtype (float32, or float64 for float64 inputs); NaN when N = 0;
      count_u: int32 (N, C', H*W), for each pixel and direction the sum, over the windows holding
      the pixel, of sign(sorted difference) at the slot it sorted into (torch's sign: 0 for a
      zero or NaN difference); 0 at pixels no window reaches. d loss / d (M u_n)[j, l] is
      count_u[n, j, l] / (N P C' k^2);
      count_v: the same for v (negated) when ``need_v_count``, else an empty (0,) int32 tensor.
  ``dzsr::local_sliced_wasserstein_backward(count, proj_scaled, backend) -> (N, C, H*W)``
      proj_scaled^T @ count[n] per sample, in proj_scaled's dtype.
Every output is a new contiguous tensor whatever the strides of u and v; the fakes below allocate
exactly these sizes, strides and dtypes. The gradients du, dv are views of the backward's output:
contiguous (N, C, H, W).

Backend kernel interface (``cpp_kernel``, looked up in ``KERNELS``): ``forward(u, v, proj, window,
stride, need_v_count)`` and ``backward(count, proj_scaled)`` with the shapes above.
"""

from __future__ import annotations

import torch

from .. import _backend
from ..sliced_wasserstein import op as sw_op
from . import cpp_kernel, reference

OP = "local_sliced_wasserstein"
DEFAULT_STRIDE = 2  # the authors' window stride

# Backend name -> the module holding its kernels (interface above); ``reference`` has no entry.
KERNELS = {"cpp": lambda: cpp_kernel}
_backend.register_op(OP, {"reference", *KERNELS})


@torch.library.custom_op("dzsr::local_sliced_wasserstein_forward", mutates_args=())
def _forward(
    u: torch.Tensor,
    v: torch.Tensor,
    proj: torch.Tensor,
    window: int,
    stride: int,
    need_v_count: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return KERNELS[backend]().forward(u, v, proj, window, stride, need_v_count)


@_forward.register_fake
def _(u, v, proj, window, stride, need_v_count, backend):
    count_shape = (u.shape[0], proj.shape[0], u.shape[2] * u.shape[3])
    count_u = u.new_empty(count_shape, dtype=torch.int32)
    count_v = u.new_empty(count_shape if need_v_count else (0,), dtype=torch.int32)
    return u.new_empty((), dtype=proj.dtype), count_u, count_v


@torch.library.custom_op("dzsr::local_sliced_wasserstein_backward", mutates_args=())
def _backward_op(count: torch.Tensor, proj_scaled: torch.Tensor, backend: str) -> torch.Tensor:
    return KERNELS[backend]().backward(count, proj_scaled)


@_backward_op.register_fake
def _(count, proj_scaled, backend):
    shape = (count.shape[0], proj_scaled.shape[1], count.shape[2])
    return count.new_empty(shape, dtype=proj_scaled.dtype)


def _setup_context(ctx, inputs, output):
    u, v, proj, window, stride, need_v_count, backend = inputs
    _, count_u, count_v = output
    ctx.mark_non_differentiable(count_u, count_v)
    ctx.save_for_backward(proj, count_u, count_v)
    ctx.backend, ctx.need_v_count = backend, need_v_count
    windows = reference.window_count(u.shape[2], window, stride) * reference.window_count(
        u.shape[3], window, stride
    )
    # N P C' k^2 compared pairs; 0 only for N = 0, whose gradients have no element to scale.
    ctx.pairs = max(u.shape[0] * windows * proj.shape[0] * window * window, 1)
    ctx.u_meta = (u.shape, u.dtype)
    ctx.v_meta = (v.shape, v.dtype)


def _backward(ctx, grad_loss, _grad_count_u, _grad_count_v):
    proj, count_u, count_v = ctx.saved_tensors
    proj_scaled = proj * (grad_loss.to(proj.dtype) / ctx.pairs)
    (u_shape, u_dtype), (v_shape, v_dtype) = ctx.u_meta, ctx.v_meta
    du = dv = None
    if ctx.needs_input_grad[0]:
        du = _backward_op(count_u, proj_scaled, ctx.backend).view(u_shape).to(u_dtype)
    if ctx.needs_input_grad[1]:
        if not ctx.need_v_count:
            raise RuntimeError(
                "local_sliced_wasserstein_loss: v started requiring grad after the forward"
            )
        dv = _backward_op(count_v, proj_scaled, ctx.backend).view(v_shape).to(v_dtype)
    return du, dv, None, None, None, None, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def _check_window_and_stride(window, stride, height: int, width: int) -> None:
    for name, value in (("window", window), ("stride", stride)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if not 1 <= window <= min(height, width):
        raise ValueError(
            f"window must be an int in [1, min(H, W)] = [1, {min(height, width)}] for features of "
            f"H x W = {height} x {width}, got {window}"
        )
    if stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride}")


def local_sliced_wasserstein_loss(
    u: torch.Tensor,
    v: torch.Tensor,
    window: int,
    stride: int = DEFAULT_STRIDE,
    proj: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Local sliced-Wasserstein loss (SelfDZSR++'s LOSW) of feature maps u and v (N, C, H, W).

    The map is cut into ``window`` x ``window`` windows at ``stride`` (no padding, the authors'
    stride 2 by default); in every window the projected values of u and v are sorted and compared:
    loss = mean over (sample n, window p, direction j, slot i) of
    |sort((M u_np)[j])_i - sort((M v_np)[j])_i| (docs/design.md#local-sliced-wasserstein). ``proj``
    M (C', C) must have unit-norm rows (checked as in ``sliced_wasserstein_loss``) and is a
    constant; without it C // 2 directions (at least 1) are drawn from N(0, I) with ``generator``
    (or the global RNG of u's device) and normalised, afresh on every call, and shared by every
    sample and window, as the authors draw them. Gradients flow to u, and to v when it requires
    grad. Half inputs compute in float32; the loss has u's dtype.

    NaN and inf in u or v follow reference.py exactly on every backend (NaN sorts last within its
    window, the loss is NaN where a sorted difference is, such slots get a zero gradient, so
    gradients stay finite). N = 0 gives a NaN loss (the mean of nothing) and empty gradients; C = 0
    a zero loss. Errors: TypeError for a wrong type or dtype, ValueError for a wrong shape, device
    or value (window outside [1, min(H, W)], stride < 1, a bad proj), each naming the argument.
    """
    sw_op._validate(u, v)  # the global loss's checks of u, v and proj: same rules, same messages
    _check_window_and_stride(window, stride, u.shape[2], u.shape[3])
    m = sw_op._resolve_proj(u, proj, None, generator)
    backend = _backend.resolve(OP, u.device)
    if backend == "reference" or not cpp_kernel.supports(u.device, u.shape[3], window, m.dtype):
        return reference.local_sliced_wasserstein(u, v, m, window, stride)
    need_v_count = v.requires_grad and torch.is_grad_enabled()
    loss, _, _ = _forward(u, v, m, window, stride, need_v_count, backend)
    return loss.to(u.dtype)

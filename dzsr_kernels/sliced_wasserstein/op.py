"""Public sliced-Wasserstein loss, its validation and its ``torch.library`` registration.

``sliced_wasserstein_loss`` checks its arguments, draws the projections when none are given and
dispatches to a backend. The ``reference`` backend runs the differentiable PyTorch oracle
(``reference.py``) directly. The fast backends are reached through two custom ops that carry the
backend name as an argument:

  ``dzsr::sliced_wasserstein_forward(u, v, proj, need_v_sign, backend) -> (loss, sign_u, sign_v)``
      loss: 0-dim, compute dtype (float32, or float64 for float64 inputs); NaN when N*C'*H*W = 0;
      sign_u: int8 (N, C', H*W), sign(sorted difference) scattered back to each element's
      unsorted position (the loss's subgradient up to the factor 1/(N C' H W)); 0 where the
      difference is 0 or NaN (torch's sign, see reference.py);
      sign_v: the same for v (negated) when ``need_v_sign``, else an empty (0,) int8 tensor.
  ``dzsr::sliced_wasserstein_backward(sign, proj_scaled, backend) -> (N, C, H*W)``
      proj_scaled^T @ sign[n] per sample, in proj_scaled's dtype.
Output layout rule: every output of both ops (and of every backend's kernels) is a new contiguous
tensor, whatever the strides of u and v (contiguous, non-contiguous views, channels-last); the
fakes below allocate exactly these sizes, strides and dtypes. The gradients du, dv are views of
the backward's output: contiguous (N, C, H, W).

Backend kernel interface (``cpp_kernel`` and ``triton_kernel``, looked up in ``KERNELS``):
``forward(u, v, proj, need_v_sign)`` and ``backward(sign, proj_scaled)`` with the shapes above;
u, v arrive as (N, C, H, W) and proj in the compute dtype.
"""

from __future__ import annotations

import torch

from .. import _backend
from .._checks import check_dim, check_same_device, check_tensor, compute_dtype
from . import cpp_kernel, reference

OP = "sliced_wasserstein"

# Rows of a user-given ``proj`` must have L2 norm 1 within this tolerance (see the public doc).
UNIT_NORM_TOL = {
    torch.float16: 1e-2,
    torch.bfloat16: 2e-2,
    torch.float32: 1e-4,
    torch.float64: 1e-8,
}


def _triton_kernel():
    """``triton_kernel``, imported on first use (why: ``dzsr_kernels._backend``)."""
    from . import triton_kernel

    return triton_kernel


# Backend name -> the module holding its kernels (interface above), called by the custom ops below;
# ``reference`` has no entry: ``reference.sliced_wasserstein`` runs without a custom op.
KERNELS = {"cpp": lambda: cpp_kernel, "triton": _triton_kernel}
_backend.register_op(OP, {"reference", *KERNELS})


@torch.library.custom_op("dzsr::sliced_wasserstein_forward", mutates_args=())
def _forward(
    u: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, need_v_sign: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return KERNELS[backend]().forward(u, v, proj, need_v_sign)


@_forward.register_fake
def _(u, v, proj, need_v_sign, backend):
    n, length = u.shape[0], u.shape[2] * u.shape[3]
    sign_shape = (n, proj.shape[0], length)
    sign_u = u.new_empty(sign_shape, dtype=torch.int8)
    sign_v = u.new_empty(sign_shape if need_v_sign else (0,), dtype=torch.int8)
    return u.new_empty((), dtype=proj.dtype), sign_u, sign_v


@torch.library.custom_op("dzsr::sliced_wasserstein_backward", mutates_args=())
def _backward_op(sign: torch.Tensor, proj_scaled: torch.Tensor, backend: str) -> torch.Tensor:
    return KERNELS[backend]().backward(sign, proj_scaled)


@_backward_op.register_fake
def _(sign, proj_scaled, backend):
    return sign.new_empty(
        (sign.shape[0], proj_scaled.shape[1], sign.shape[2]), dtype=proj_scaled.dtype
    )


def _setup_context(ctx, inputs, output):
    u, v, proj, need_v_sign, backend = inputs
    _, sign_u, sign_v = output
    ctx.mark_non_differentiable(sign_u, sign_v)
    ctx.save_for_backward(proj, sign_u, sign_v)
    ctx.backend, ctx.need_v_sign = backend, need_v_sign
    ctx.u_meta = (u.shape, u.dtype)
    ctx.v_meta = (v.shape, v.dtype)


def _backward(ctx, grad_loss, _grad_sign_u, _grad_sign_v):
    proj, sign_u, sign_v = ctx.saved_tensors
    count = max(
        sign_u.numel(), 1
    )  # 0 only for empty inputs, whose gradients have no element to scale
    proj_scaled = proj * (grad_loss.to(proj.dtype) / count)
    (u_shape, u_dtype), (v_shape, v_dtype) = ctx.u_meta, ctx.v_meta
    du = (
        _backward_op(sign_u, proj_scaled, ctx.backend).view(u_shape).to(u_dtype)
        if ctx.needs_input_grad[0]
        else None
    )
    dv = None
    if ctx.needs_input_grad[1]:
        if not ctx.need_v_sign:
            raise RuntimeError(
                "sliced_wasserstein_loss: v started requiring grad after the forward"
            )
        dv = _backward_op(sign_v, proj_scaled, ctx.backend).view(v_shape).to(v_dtype)
    return du, dv, None, None, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def _check_dense(name: str, t: torch.Tensor) -> None:
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def _validate(u, v) -> None:
    check_tensor("u", u, 4, "(N, C, H, W)")
    check_tensor("v", v, 4, "(N, C, H, W)")
    _check_dense("u", u)
    _check_dense("v", v)
    if u.shape != v.shape:
        raise ValueError(
            f"v must have the shape of u (N, C, H, W) = {tuple(u.shape)}, got {tuple(v.shape)}"
        )
    if u.dtype != v.dtype:
        raise TypeError(f"u and v must share one dtype, got u {u.dtype} and v {v.dtype}")
    check_same_device(u=u, v=v)


def _validate_proj(proj, channels: int, device: torch.device) -> None:
    check_tensor("proj", proj, 2, f"(C', C={channels})")
    _check_dense("proj", proj)
    check_dim("proj", proj, 1, channels, f"(C', C={channels})")
    if proj.shape[0] < 1:
        raise ValueError(
            f"proj must have at least one row (C' >= 1), got shape {tuple(proj.shape)}"
        )
    if proj.device != device:
        raise ValueError(f"proj must be on the device of u ({device}), got {proj.device}")
    if torch.compiler.is_compiling():  # the value checks below read the data: eager only
        return
    if not bool(torch.isfinite(proj).all()):
        raise ValueError("proj must be finite (no NaN or inf entries)")
    if channels == 0:  # R^0 has no unit vectors: every (C', 0) proj projects to 0
        return
    norms = torch.linalg.vector_norm(proj.to(torch.float64), dim=1)
    worst = float((norms - 1).abs().max())
    if worst > UNIT_NORM_TOL[proj.dtype]:
        raise ValueError(
            f"proj rows must have unit L2 norm (within {UNIT_NORM_TOL[proj.dtype]:g}); the worst row is off by "
            f"{worst:.3g}: pass torch.nn.functional.normalize(proj, dim=1)"
        )


def _check_num_proj_and_generator(num_proj, generator) -> None:
    if num_proj is not None:
        if not isinstance(num_proj, int) or isinstance(num_proj, bool):
            raise TypeError(
                f"num_proj must be a positive int or None, got {type(num_proj).__name__}"
            )
        if num_proj < 1:
            raise ValueError(f"num_proj must be a positive int, got {num_proj!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def _resolve_proj(u, proj, num_proj, generator) -> torch.Tensor:
    channels, dtype = u.shape[1], compute_dtype(u)
    _check_num_proj_and_generator(num_proj, generator)
    if proj is not None:
        if generator is not None:
            raise ValueError("give proj or generator, not both (generator only draws proj)")
        _validate_proj(proj, channels, u.device)
        if num_proj is not None and num_proj != proj.shape[0]:
            raise ValueError(f"num_proj={num_proj} disagrees with proj's {proj.shape[0]} rows")
        return proj.to(dtype)
    if num_proj is None:
        num_proj = reference.default_num_proj(channels)
    return reference.draw_projections(channels, num_proj, generator, u.device, dtype)


def sliced_wasserstein_loss(
    u: torch.Tensor,
    v: torch.Tensor,
    proj: torch.Tensor | None = None,
    num_proj: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced-Wasserstein loss between feature maps u and v (N, C, H, W); a 0-dim tensor.

    loss = mean over (n, k, i) of |sort(M u_n)[k]_i - sort(M v_n)[k]_i|, each direction's H*W
    projected values sorted ascending (docs/design.md#sliced-wasserstein). ``proj`` M (C', C) must have unit-norm rows:
    rows off by more than ``UNIT_NORM_TOL`` are rejected (ValueError), never silently normalised;
    it is treated as a constant (no gradient). Without ``proj``, ``num_proj`` directions (default
    max(1, C // 2)) are drawn from N(0, I) with ``generator`` (or the global RNG of u's device) and
    normalised, afresh on every call. Gradients flow to u, and to v when it requires grad, through
    the sort permutation; among tied values any assignment of the tied slots is a valid
    subgradient, and backends may pick different ones. Half inputs compute in float32; the loss
    has u's dtype.

    NaN and inf in u or v follow reference.py exactly on every backend (NaN sorts last, the loss is
    NaN where a sorted difference is NaN, such slots get a zero gradient, so gradients stay finite).
    Empty inputs are valid: N = 0 or H*W = 0 give a NaN loss (the mean of nothing) and empty
    gradients; C = 0 gives a zero loss (every projection is 0), empty gradients, and any (C', 0)
    proj is accepted (R^0 has no unit vectors). Errors: TypeError for a wrong type or dtype,
    ValueError for a wrong shape, device or value, each naming the argument. Under
    ``torch.compile`` a given proj's values (finite, unit rows) are not checked: that needs its data.
    """
    _validate(u, v)
    m = _resolve_proj(u, proj, num_proj, generator)
    backend = _backend.resolve(OP, u.device)
    if backend == "reference":
        return reference.sliced_wasserstein(u, v, m)
    loss, _, _ = _forward(u, v, m, v.requires_grad and torch.is_grad_enabled(), backend)
    return loss.to(u.dtype)

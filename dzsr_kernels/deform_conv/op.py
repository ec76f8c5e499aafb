"""Public deformable-convolution ops, their validation and their ``torch.library`` registration.

``affine_deform_conv2d`` (AdaSTN) and ``deform_conv2d`` (general offsets) both run the packed
geometry kernel described in ``reference.py``. The fast backends are reached through the custom ops
``torch.ops.dzsr.deform_conv2d_packed`` (forward) and ``..._backward``, which carry the backend name
as an argument, so autograd, ``torch.compile`` and ``opcheck`` see one op per call site. The
``reference`` backend runs the differentiable PyTorch oracle directly.

Backend kernel interface (``cpp_kernel`` and ``triton_kernel``, looked up in ``KERNELS``):
  forward(x, geom, affine, weight, bias, groups) -> out (N, C_out, H, W), dtype of x
  backward(grad_out, x, geom, affine, weight, groups) -> (dx, dgeom, dweight)
Output layout rule: every output is a new tensor of the shape above, each gradient in its input's
dtype; out and dx in ``memory_format_of(x)`` (channels-last for channels-last x, so the CUDA
channels-last kernels need no copy either way), dgeom and dweight contiguous, whatever the strides
of the inputs. The custom ops below enforce it for every backend (a kernel may return contiguous
tensors; they are converted), and the fakes return exactly that, so torch.compile and opcheck see
the ops' sizes, strides and dtypes.

NaN/Inf and empty inputs follow the rule in ``reference.py`` on every backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _backend
from .._checks import check_dim, check_match, check_same_device, check_tensor, compute_dtype
from . import cpp_kernel, reference

OP = "deform_conv2d"


def _triton_kernel():
    """``triton_kernel``, imported on first use (why: ``dzsr_kernels._backend``)."""
    from . import triton_kernel

    return triton_kernel


# Backend name -> the module holding its kernels (interface above), called by the custom ops below;
# ``reference`` has no entry: ``reference.deform_conv2d`` runs without a custom op.
KERNELS = {"cpp": lambda: cpp_kernel, "triton": _triton_kernel}
_backend.register_op(OP, {"reference", *KERNELS})


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` if ``x`` (N,C,H,W) is stored so (and not also NCHW-contiguous),
    else ``torch.contiguous_format``: the memory format of the op's output and of dx."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _in_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """t with exactly the strides of ``torch.empty(t.shape, memory_format=fmt)`` (what the fakes
    return; a copy only when t has other strides, e.g. a contiguous kernel output for
    channels-last x)."""
    want = torch.empty(t.shape, device="meta", memory_format=fmt).stride()
    return t if t.stride() == want else torch.empty_like(t, memory_format=fmt).copy_(t)


@torch.library.custom_op("dzsr::deform_conv2d_packed", mutates_args=())
def _packed(
    x: torch.Tensor,
    geom: torch.Tensor,
    affine: bool,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    backend: str,
) -> torch.Tensor:
    out = KERNELS[backend]().forward(x, geom, affine, weight, bias, groups)
    return _in_format(out, memory_format_of(x))


@_packed.register_fake
def _(x, geom, affine, weight, bias, groups, backend):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


@torch.library.custom_op("dzsr::deform_conv2d_packed_backward", mutates_args=())
def _packed_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    geom: torch.Tensor,
    affine: bool,
    weight: torch.Tensor,
    groups: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dgeom, dweight = KERNELS[backend]().backward(grad_out, x, geom, affine, weight, groups)
    fmt = torch.contiguous_format
    return _in_format(dx, memory_format_of(x)), _in_format(dgeom, fmt), _in_format(dweight, fmt)


@_packed_backward.register_fake
def _(grad_out, x, geom, affine, weight, groups, backend):
    # new_empty, not empty_like: contiguous whatever the inputs' strides, like the ops' outputs.
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    return dx, geom.new_empty(geom.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x, geom, affine, weight, bias, groups, backend = inputs
    ctx.save_for_backward(x, geom, weight)
    ctx.affine, ctx.groups, ctx.backend, ctx.has_bias = affine, groups, backend, bias is not None
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_out):
    x, geom, weight = ctx.saved_tensors
    dx, dgeom, dweight = _packed_backward(
        grad_out.contiguous(memory_format=memory_format_of(x)),
        x,
        geom,
        ctx.affine,
        weight,
        ctx.groups,
        ctx.backend,
    )
    dbias = None
    if ctx.has_bias:
        dbias = grad_out.sum((0, 2, 3), dtype=compute_dtype(grad_out)).to(ctx.bias_dtype)
    return dx, dgeom, None, dweight, dbias, None, None


_packed.register_autograd(_backward, setup_context=_setup_context)


def _validate(x, weight, bias, groups) -> None:
    check_tensor("x", x, 4, "(N, C, H, W)")
    check_tensor("weight", weight, 4, "(C_out, C/groups, k, k)")
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise TypeError(f"groups must be a positive int, got {type(groups).__name__} {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    c, c_out, k = x.shape[1], weight.shape[0], weight.shape[2]
    if weight.shape[2] != weight.shape[3] or k % 2 == 0:
        raise ValueError(
            f"weight must be (C_out, C/groups, k, k) with odd square k, got shape {tuple(weight.shape)}"
        )
    if c % groups or c_out % groups:
        raise ValueError(
            f"groups must divide both input channels C={c} and output channels C_out={c_out}, "
            f"got groups={groups}"
        )
    check_dim("weight", weight, 1, c // groups, f"(C_out, C/groups={c // groups}, k, k)")
    if bias is not None:
        check_tensor("bias", bias, 1, f"(C_out={c_out},)")
        check_dim("bias", bias, 0, c_out, f"(C_out={c_out},)")


def _check_one_dtype(**tensors: torch.Tensor | None) -> None:
    present = {k: v.dtype for k, v in tensors.items() if v is not None}
    if len(set(present.values())) > 1:
        listing = ", ".join(f"{k} {d}" for k, d in present.items())
        raise TypeError(f"{', '.join(present)} must share one floating dtype, got {listing}")


def _dispatch(x, geom, affine, weight, bias, groups):
    backend = _backend.resolve(OP, x.device)
    if backend == "reference":
        return reference.deform_conv2d(x, geom, affine, weight, bias, groups)
    return _packed(x, geom, affine, weight, bias, groups, backend)


def affine_deform_conv2d(
    x: torch.Tensor,
    A: torch.Tensor,
    b: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    groups: int = 1,
) -> torch.Tensor:
    """AdaSTN deformable convolution: tap t of pixel q samples x at q + A(q) g_t + b(q).

    x (N,C,H,W), A (N,4,H,W) row-major [[A0,A1],[A2,A3]] acting on (gy,gx), b (N,2,H,W) as (by,bx),
    weight (C_out, C/groups, k, k) with odd k, bias (C_out,) or None. Returns (N, C_out, H, W).
    """
    _validate(x, weight, bias, groups)
    check_tensor("A", A, 4, "(N, 4, H, W)")
    check_tensor("b", b, 4, "(N, 2, H, W)")
    check_dim("A", A, 1, 4, "(N, 4, H, W)")
    check_dim("b", b, 1, 2, "(N, 2, H, W)")
    check_match(("x", "A", "b"), (x, A, b), (0, 2, 3), "(N, H, W)")
    check_same_device(x=x, A=A, b=b, weight=weight, bias=bias)
    _check_one_dtype(x=x, A=A, b=b, weight=weight, bias=bias)
    return _dispatch(x, torch.cat([A, b], dim=1), True, weight, bias, groups)


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    groups: int = 1,
) -> torch.Tensor:
    """General-offset deformable convolution, equal to ``torchvision.ops.deform_conv2d(x, offset,
    weight, bias, padding=k//2)`` (stride 1, no mask, one offset group).

    offset (N, 2k², H, W) interleaved (dy_t, dx_t) for tap t = i*k + j.
    """
    _validate(x, weight, bias, groups)
    k = weight.shape[2]
    check_tensor("offset", offset, 4, f"(N, 2k²={2 * k * k}, H, W)")
    check_dim("offset", offset, 1, 2 * k * k, f"(N, 2k²={2 * k * k}, H, W)")
    check_match(("x", "offset"), (x, offset), (0, 2, 3), "(N, H, W)")
    check_same_device(x=x, offset=offset, weight=weight, bias=bias)
    _check_one_dtype(x=x, offset=offset, weight=weight, bias=bias)
    return _dispatch(x, offset, False, weight, bias, groups)


def centre_tap_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """The P=0 case (A=0, b=0): every tap reads the centre pixel, i.e. a 1x1 conv with summed taps."""
    return F.conv2d(x, weight.sum((2, 3), keepdim=True), bias, groups=groups)


class AffineDeformConv2d(torch.nn.Module):
    """AdaSTN's deformable convolution layer. ``forward(x, A=None, b=None)``; ``A=b=None`` is P=0
    and runs as an exact 1x1 convolution whose weight is the sum of the k² taps."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        groups: int = 1,
        bias: bool = False,
    ):
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        self.groups = groups
        self.weight = torch.nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size)
        )
        self.bias = torch.nn.Parameter(torch.zeros(out_channels)) if bias else None
        torch.nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(
        self, x: torch.Tensor, A: torch.Tensor | None = None, b: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (N,C,H,W) -> (N, C_out, H, W): ``affine_deform_conv2d`` with A (N,4,H,W) and b
        (N,2,H,W), or the P=0 path (``centre_tap_conv2d``) when both are None; ValueError when only
        one is given."""
        if (A is None) != (b is None):
            raise ValueError("give both A and b, or neither (P=0)")
        if A is None:
            _validate(x, self.weight, self.bias, self.groups)
            return centre_tap_conv2d(x, self.weight, self.bias, self.groups)
        return affine_deform_conv2d(x, A, b, self.weight, self.bias, self.groups)

"""Sliced-Wasserstein custom ops on contiguous, non-contiguous (transposed) and channels-last u, v:
the fakes return exactly the sizes, strides and dtypes the kernels return (op.py's layout rule:
every output new and contiguous), ``torch.library.opcheck``, and ``torch.compile(fullgraph=True)``
forward + backward against eager, for the ``cpp`` backend (and the ``triton`` one under the
interpreter for the fakes and opcheck's schema / fake-tensor tests)."""

import pytest
import torch
from sliced_wasserstein_oracle import LAYOUTS, require_backend, with_layout
from torch._subclasses.fake_tensor import FakeTensorMode

import dzsr_kernels as dk
from dzsr_kernels.sliced_wasserstein import draw_projections, sliced_wasserstein_loss
from dzsr_kernels.sliced_wasserstein import op as sw_op


def _meta(t: torch.Tensor):
    return tuple(t.shape), t.stride(), t.dtype


def _inputs(shape, layout, dtype=torch.float32):
    u, v = (
        with_layout(torch.randn(shape, dtype=dtype), layout),
        with_layout(torch.randn(shape, dtype=dtype), layout),
    )
    if layout != "contiguous" and min(shape) > 0 and min(shape[1:]) > 1:
        assert not u.is_contiguous() and not v.is_contiguous()
    proj = draw_projections(
        shape[1], 2, dtype=torch.float64 if dtype == torch.float64 else torch.float32
    )
    return u, v, proj


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((2, 5, 3, 4), torch.float32),
        ((1, 3, 4, 2), torch.float64),
        ((2, 4, 3, 3), torch.float16),
        ((0, 5, 3, 4), torch.float32),
    ],
)
@pytest.mark.parametrize("need_v_sign", [False, True])
def test_fakes_equal_kernel_outputs(backend, layout, shape, dtype, need_v_sign):
    u, v, proj = _inputs(shape, layout, dtype)
    require_backend(backend)
    real = sw_op._forward(u, v, proj, need_v_sign, backend)
    scaled = proj * 0.1
    real_grad = sw_op._backward_op(real[1], scaled, backend)
    with FakeTensorMode() as mode:
        fake = sw_op._forward(
            mode.from_tensor(u), mode.from_tensor(v), mode.from_tensor(proj), need_v_sign, backend
        )
        fake_grad = sw_op._backward_op(mode.from_tensor(real[1]), mode.from_tensor(scaled), backend)
    assert [_meta(t) for t in fake] == [_meta(t) for t in real]
    assert _meta(fake_grad) == _meta(real_grad)
    assert all(t.is_contiguous() for t in (*real, real_grad))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("need_v_sign", [False, True])
def test_opcheck_layouts(layout, need_v_sign):
    u, v, proj = _inputs((2, 5, 3, 4), layout)
    u.requires_grad_()
    v.requires_grad_(need_v_sign)
    require_backend("cpp")
    torch.library.opcheck(sw_op._forward, (u, v, proj, need_v_sign, "cpp"))
    sign = torch.randint(-1, 2, (2, 2, 12), dtype=torch.int8)
    torch.library.opcheck(sw_op._backward_op, (sign, proj * 0.1, "cpp"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_triton_layouts(layout):
    u, v, proj = _inputs((1, 4, 3, 3), layout)
    require_backend("triton")
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(sw_op._forward, (u, v, proj, True, "triton"), test_utils=utils)
    sign = torch.randint(-1, 2, (1, 2, 9), dtype=torch.int8)
    torch.library.opcheck(sw_op._backward_op, (sign, proj * 0.1, "triton"), test_utils=utils)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_fullgraph_forward_backward(layout):
    """Inductor checks the fakes' strides against the kernels' (assert_size_stride on extern
    outputs); the compiled loss and gradients equal eager."""
    u, v, proj = _inputs((2, 6, 3, 5), layout)
    u.requires_grad_()
    v.requires_grad_()

    def loss_fn(a, b):
        return sliced_wasserstein_loss(a, b, proj=proj)

    torch._dynamo.reset()
    with dk.use_backend("cpp"):
        eager = loss_fn(u, v)
        eager_grads = torch.autograd.grad(eager, (u, v))
        compiled = torch.compile(loss_fn, fullgraph=True)(u, v)
        grads = torch.autograd.grad(compiled, (u, v))
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    for g, e in zip(grads, eager_grads, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-9)

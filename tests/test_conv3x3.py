"""3x3 convolution (``dzsr_kernels.conv3x3``): the CPU Winograd kernel against the reference
(``F.conv2d``) on random shapes, dtypes and layouts, forward and backward; its exact fallback for
non-finite and huge inputs; the crop property tiled inference relies on; the custom-op registration
and the dispatch (which calls run the reference).

Tolerance: Winograd F(4x4, 3x3) rounds a few ulps of a tile window's magnitude, so outputs are
compared to the float64 reference within 5e-6 (float32) or 1e-14 (float64) of the largest sum of
absolute terms, ``conv(|x|, |w|) + |b|``. Measured on (1, 33, 48, 21, 17), 200 seeds: the kernel's
worst float32 error 1.8e-6 of that, oneDNN's direct convolution 1.6e-7.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import dzsr_kernels as dk
from dzsr_kernels.conv3x3 import cpp_kernel
from dzsr_kernels.conv3x3 import op as conv_op

BACKEND = "cpp"
EPS = {torch.float32: 5e-6, torch.float64: 1e-14}
# (N, C, C', H, W): tile-multiple and odd sizes (partial 4x4 tiles, one-pixel maps), channel counts
# that are and are not multiples of the vector width, more tiles than one block of 12 per row.
SHAPES = [
    (2, 16, 16, 8, 8),
    (1, 17, 33, 5, 3),
    (3, 24, 19, 1, 1),
    (1, 40, 64, 13, 53),
    (2, 64, 16, 9, 2),
    (1, 33, 48, 21, 17),
    (2, 8, 3, 11, 6),
]
LAYOUTS = ["contiguous", "channels_last", "strided"]


@pytest.fixture(autouse=True, scope="module")
def _cpp_loaded():
    with dk.use_backend(BACKEND):
        dk._backend.resolve(conv_op.OP, torch.device("cpu"))


def with_layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a twice-as-wide map
        wide = torch.stack([t, torch.full_like(t, float("nan"))], -1).flatten(-2)
        return wide[..., ::2]
    return t


def random_case(n, c, c_out, h, w, dtype, bias=True):
    x = torch.randn(n, c, h, w, dtype=dtype)
    weight = torch.randn(c_out, c, 3, 3, dtype=dtype) / (9 * c) ** 0.5
    return x, weight, torch.randn(c_out, dtype=dtype) if bias else None


def check_close(out, x, weight, bias):
    """out against the float64 reference within EPS of the largest sum of absolute terms."""
    b64 = None if bias is None else bias.double()
    exact = F.conv2d(x.double(), weight.double(), b64, padding=1)
    b_abs = None if bias is None else bias.double().abs()
    scale = F.conv2d(x.double().abs(), weight.double().abs(), b_abs, padding=1).max().item()
    assert out.dtype == x.dtype and out.shape == exact.shape
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=EPS[x.dtype] * max(scale, 1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(shape, dtype, layout):
    x, weight, bias = random_case(*shape, dtype)
    x = with_layout(x, layout)
    with dk.use_backend(BACKEND):
        out = dk.conv3x3(x, weight, bias)
    check_close(out, x, weight, bias)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_winograd_kernel_runs():
    """Not the fallback: the kernel rounds differently from oneDNN's direct convolution."""
    x, weight, bias = random_case(1, 32, 32, 16, 16, torch.float32)
    with dk.use_backend(BACKEND):
        out = dk.conv3x3(x, weight, bias)
    assert not torch.equal(out, F.conv2d(x, weight, bias, padding=1))


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_reference(bias):
    x, weight, b = random_case(2, 17, 20, 7, 9, torch.float64, bias)
    grad = torch.randn(2, 20, 7, 9, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, weight, b) if t is not None]
    with dk.use_backend(BACKEND):
        got = torch.autograd.grad(dk.conv3x3(x, weight, b), inputs, grad)
    want = torch.autograd.grad(F.conv2d(x, weight, b, padding=1), inputs, grad)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    x, weight, bias = (t.requires_grad_() for t in random_case(1, 16, 16, 5, 6, torch.float64))
    assert torch.autograd.gradcheck(lambda *a: conv_op._conv3x3(*a, BACKEND), (x, weight, bias))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(layout, bias):
    x, weight, b = random_case(2, 16, 18, 5, 7, torch.float32, bias)
    x = with_layout(x, layout).requires_grad_()
    torch.library.opcheck(conv_op._conv3x3, (x, weight.requires_grad_(), b, BACKEND))


@pytest.mark.parametrize("shape", [(2, 16, 16, 5, 7), (0, 16, 16, 4, 4), (1, 16, 16, 0, 3)])
def test_fake_equals_kernel_output(shape):
    x, weight, bias = random_case(*shape, torch.float32)
    real = conv_op._conv3x3(x, weight, bias, BACKEND)
    with FakeTensorMode() as mode:
        fake = conv_op._conv3x3(*map(mode.from_tensor, (x, weight, bias)), BACKEND)
    assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype)


def test_compile_fullgraph_forward_backward():
    x, weight, bias = (t.requires_grad_() for t in random_case(1, 16, 16, 6, 9, torch.float32))

    def f(a, w, b):
        return dk.conv3x3(a, w, b).square().sum()

    torch._dynamo.reset()
    with dk.use_backend(BACKEND):
        eager = f(x, weight, bias)
        eager_grads = torch.autograd.grad(eager, (x, weight, bias))
        compiled = torch.compile(f, fullgraph=True)(x, weight, bias)
        grads = torch.autograd.grad(compiled, (x, weight, bias))
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    for g, e in zip(grads, eager_grads, strict=True):  # inductor fuses 2 y in another order
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_crops_at_multiples_of_four_reproduce_the_whole_map():
    """Outputs whose 4x4 tile reads no padding of the crop equal the whole map's bit for bit."""
    x, weight, bias = random_case(1, 16, 16, 30, 27, torch.float32)
    with dk.use_backend(BACKEND):
        whole = dk.conv3x3(x, weight, bias)
        crop = dk.conv3x3(x[..., 8:, 4:], weight, bias)
    assert torch.equal(crop[..., 4:, 4:], whole[..., 12:, 8:])


def _poisoned(x, where, value):
    flat = x.flatten().clone()
    flat[where] = value
    return flat.view_as(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "huge", "-huge"])
@pytest.mark.parametrize("target", ["x", "weight", "bias"])
def test_nonfinite_and_huge_values_give_the_reference_exactly(dtype, value, target):
    """NaN, inf and values too large for the transforms (a thousandth of the dtype's largest): the
    reference's output, bit for bit (the kernel runs ``at::conv2d`` for the whole call)."""
    huge = torch.finfo(dtype).max / 1e3
    number = {"huge": huge, "-huge": -huge}.get(value) or float(value)
    x, weight, bias = random_case(2, 16, 20, 9, 11, dtype)
    if target == "x":
        x = _poisoned(x, torch.randint(x.numel(), (3,)), number)
    elif target == "weight":
        weight = _poisoned(weight, torch.randint(weight.numel(), (2,)), number)
    else:
        bias = _poisoned(bias, torch.randint(bias.numel(), (1,)), number)
    with dk.use_backend(BACKEND):
        out = dk.conv3x3(x, weight, bias)
    torch.testing.assert_close(
        out, F.conv2d(x, weight, bias, padding=1), rtol=0, atol=0, equal_nan=True
    )


def test_empty_batch():
    """No sample: an empty output, empty and zero gradients, no error."""
    c_out = 17
    x, weight, bias = (t.requires_grad_() for t in random_case(0, 16, c_out, 4, 5, torch.float32))
    with dk.use_backend(BACKEND):
        out = dk.conv3x3(x, weight, bias)
    out.sum().backward()
    assert out.shape == (0, c_out, 4, 5) and x.grad.shape == x.shape
    assert weight.grad.shape == weight.shape and torch.count_nonzero(weight.grad) == 0


def test_dispatch():
    """The kernel runs only where ``cpp_kernel.supports``: reference backend, few input channels, half
    dtypes and autocast run ``F.conv2d`` itself (equal bit for bit)."""
    x, weight, bias = random_case(1, 16, 16, 8, 8, torch.float32)
    small = random_case(1, cpp_kernel.MIN_IN_CHANNELS - 1, 16, 8, 8, torch.float32)
    with dk.use_backend("reference"):
        assert torch.equal(dk.conv3x3(x, weight, bias), F.conv2d(x, weight, bias, padding=1))
    with dk.use_backend(BACKEND):
        assert torch.equal(dk.conv3x3(*small), F.conv2d(*small, padding=1))
        half = [t.bfloat16() for t in (x, weight, bias)]
        assert torch.equal(dk.conv3x3(*half), F.conv2d(*half, padding=1))
        with torch.autocast("cpu", torch.bfloat16):
            got, want = dk.conv3x3(x, weight, bias), F.conv2d(x, weight, bias, padding=1)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_module_is_a_conv2d():
    """Same parameters and state dict as nn.Conv2d; strided and grouped ones are nn.Conv2d's."""
    module = dk.Conv3x3(16, 32)
    plain = nn.Conv2d(16, 32, 3, padding=1)
    assert module.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(module.state_dict())
    x = torch.randn(1, 16, 9, 9)
    with dk.use_backend(BACKEND), torch.no_grad():
        check_close(module(x), x, module.weight, module.bias)
        for strided in (dk.Conv3x3(16, 16, stride=2), dk.Conv3x3(16, 16, groups=4)):
            assert torch.equal(strided(x), nn.Conv2d.forward(strided, x))


BAD = [
    (dict(x=[1.0]), TypeError, r"x must be a torch.Tensor"),
    (dict(x=torch.randn(16, 4, 4)), ValueError, r"x must have shape \(N, C, H, W\)"),
    (dict(weight=torch.randn(8, 16, 5, 5)), ValueError, r"weight must have shape \(C', C, 3, 3\)"),
    (dict(weight=torch.randn(8, 15, 3, 3)), ValueError, r"C = x's 16 channels"),
    (dict(weight=torch.randn(0, 16, 3, 3), bias=None), ValueError, r"one output channel"),
    (dict(bias=torch.randn(7)), ValueError, r"bias must have shape \(C',\)"),
    (dict(bias=torch.randn(8).double()), TypeError, r"one dtype"),
    (dict(x=torch.ones(1, 16, 4, 4, dtype=torch.int32)), TypeError, r"x must be a floating"),
    (dict(x=torch.randn(1, 16, 0, 4)), ValueError, r"x must have at least one channel, row"),
    (dict(x=torch.randn(1, 0, 4, 4), weight=torch.randn(8, 0, 3, 3)), ValueError, r"one channel"),
]


@pytest.mark.parametrize("bad, error, match", BAD)
def test_bad_inputs(bad, error, match):
    args = dict(x=torch.randn(1, 16, 4, 4), weight=torch.randn(8, 16, 3, 3), bias=torch.randn(8))
    args.update(bad)
    with pytest.raises(error, match=match):
        dk.conv3x3(**args)

"""3x3 convolution (``dzsr_kernels.conv3x3``): the CPU Winograd kernel against the reference
(``F.conv2d``) on random shapes, dtypes and layouts, forward and backward; its fused epilogue
(residual add, ReLU / LeakyReLU) against the same ops run after it; its exact fallback for
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
from dzsr_kernels.conv3x3 import reference as conv_ref

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
    if cpp_kernel.supports(x):  # the kernel's layout (F.conv2d keeps the input's)
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
    op = conv_op._conv3x3
    assert torch.autograd.gradcheck(lambda *a: op(*a, None, None, BACKEND), (x, weight, bias))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(layout, bias):
    x, weight, b = random_case(2, 16, 18, 5, 7, torch.float32, bias)
    x = with_layout(x, layout).requires_grad_()
    torch.library.opcheck(conv_op._conv3x3, (x, weight.requires_grad_(), b, None, None, BACKEND))


@pytest.mark.parametrize("shape", [(2, 16, 16, 5, 7), (0, 16, 16, 4, 4), (1, 16, 16, 0, 3)])
def test_fake_equals_kernel_output(shape):
    x, weight, bias = random_case(*shape, torch.float32)
    residual = torch.randn(shape[0], shape[2], *shape[3:])
    real = conv_op._conv3x3(x, weight, bias, residual, 0.1, BACKEND)
    with FakeTensorMode() as mode:
        fake_inputs = map(mode.from_tensor, (x, weight, bias, residual))
        fake = conv_op._conv3x3(*fake_inputs, 0.1, BACKEND)
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


# The epilogues the model uses: residual add (residual blocks, body tail), ReLU (encoders, VGG
# trunk), LeakyReLU(0.1) (fusion), and both at once.
EPILOGUES = [(False, None), (True, None), (False, 0.0), (False, 0.1), (True, 0.2)]


def epilogue_case(shape, dtype, with_residual, layout="contiguous"):
    x, weight, bias = random_case(*shape, dtype)
    n, _, c_out, h, w = shape
    residual = (
        with_layout(torch.randn(n, c_out, h, w, dtype=dtype), layout) if with_residual else None
    )
    return x, weight, bias, residual


@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_residual, slope", EPILOGUES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_epilogue_equals_the_ops_after_the_kernel(shape, dtype, with_residual, slope, layout):
    """act(conv + residual) fused equals the kernel's convolution followed by torch's add and
    activation bit for bit (the epilogue adds no rounding), in any residual layout."""
    x, weight, bias, residual = epilogue_case(shape, dtype, with_residual, layout)
    with dk.use_backend(BACKEND):
        fused = dk.conv3x3(x, weight, bias, residual=residual, negative_slope=slope)
        z = dk.conv3x3(x, weight, bias)
    want = conv_ref.epilogue(z, residual, slope)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, want, rtol=0, atol=0)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
def test_nonfinite_residual_propagates_as_in_the_reference(value, slope):
    x, weight, bias, residual = epilogue_case((1, 16, 8, 9, 10), torch.float32, True)
    residual = _poisoned(residual, torch.randint(residual.numel(), (4,)), float(value))
    with dk.use_backend(BACKEND):
        fused = dk.conv3x3(x, weight, bias, residual=residual, negative_slope=slope)
        want = conv_ref.epilogue(dk.conv3x3(x, weight, bias), residual, slope)
    torch.testing.assert_close(fused, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("with_residual, slope", EPILOGUES[1:])
def test_fallback_applies_the_epilogue_exactly(with_residual, slope):
    """A NaN input runs at::conv2d for the whole call; the epilogue after it gives the reference."""
    x, weight, bias, residual = epilogue_case((2, 16, 12, 7, 9), torch.float32, with_residual)
    x = _poisoned(x, torch.randint(x.numel(), (2,)), float("nan"))
    with dk.use_backend(BACKEND):
        out = dk.conv3x3(x, weight, bias, residual=residual, negative_slope=slope)
    want = conv_ref.conv3x3(x, weight, bias, residual, slope)
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("with_residual, slope", EPILOGUES[1:])
def test_epilogue_gradients_match_reference(with_residual, slope):
    x, weight, bias, residual = epilogue_case((2, 17, 20, 7, 9), torch.float64, with_residual)
    grad = torch.randn(2, 20, 7, 9, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, weight, bias, residual) if t is not None]
    with dk.use_backend(BACKEND):
        out = dk.conv3x3(x, weight, bias, residual=residual, negative_slope=slope)
        got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(conv_ref.conv3x3(x, weight, bias, residual, slope), inputs, grad)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_residual, slope", EPILOGUES[1:])
def test_epilogue_gradcheck_and_opcheck(with_residual, slope):
    x, weight, bias, residual = epilogue_case((1, 16, 8, 5, 6), torch.float64, with_residual)
    inputs = [t.requires_grad_() if t is not None else None for t in (x, weight, bias, residual)]
    op = conv_op._conv3x3
    assert torch.autograd.gradcheck(lambda *a: op(*a, slope, BACKEND), inputs)
    torch.library.opcheck(op, (*[None if t is None else t.float() for t in inputs], slope, BACKEND))


def test_module_epilogue():
    """Conv3x3's forward takes the epilogue on the kernel path and on nn.Conv2d's (strided)."""
    module, strided = dk.Conv3x3(16, 8), dk.Conv3x3(16, 8, stride=2)
    x, residual = torch.randn(1, 16, 9, 9), torch.randn(1, 8, 9, 9)
    with dk.use_backend(BACKEND), torch.no_grad():
        want = F.leaky_relu(module(x) + residual, 0.1)
        assert torch.equal(module(x, residual, 0.1), want)
        z = nn.Conv2d.forward(strided, x)
        assert torch.equal(
            strided(x, residual[..., ::2, ::2], 0.0), F.relu(z + residual[..., ::2, ::2])
        )
        with pytest.raises(
            ValueError, match=r"residual must have the output's shape \(1, 8, 5, 5\)"
        ):
            strided(x, residual)


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
    small = random_case(1, cpp_kernel.min_in_channels(torch.float32) - 1, 16, 8, 8, torch.float32)
    with dk.use_backend("reference"):
        assert torch.equal(dk.conv3x3(x, weight, bias), F.conv2d(x, weight, bias, padding=1))
    with dk.use_backend(BACKEND):
        assert torch.equal(dk.conv3x3(*small), F.conv2d(*small, padding=1))
        half = [t.bfloat16() for t in (x, weight, bias)]
        assert torch.equal(dk.conv3x3(*half), F.conv2d(*half, padding=1))
        with torch.autocast("cpu", torch.bfloat16):
            got, want = dk.conv3x3(x, weight, bias), F.conv2d(x, weight, bias, padding=1)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)
        residual = torch.randn(1, 16, 8, 8)
        with torch.autocast("cpu", torch.bfloat16):
            got = dk.conv3x3(x, weight, bias, residual=residual, negative_slope=0.0)
            want = F.relu(F.conv2d(x, weight, bias, padding=1) + residual)
        assert got.dtype == torch.float32 and torch.equal(got, want)
    with dk.use_backend("reference"):
        got = dk.conv3x3(x, weight, bias, residual=residual, negative_slope=0.1)
        assert torch.equal(got, F.leaky_relu(F.conv2d(x, weight, bias, padding=1) + residual, 0.1))


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
    (dict(residual=torch.randn(1, 8, 1, 1)), ValueError, r"residual must have the output's shape"),
    (
        dict(residual=torch.randn(1, 8, 4, 4).double()),
        TypeError,
        r"and residual must have one dtype",
    ),
    (dict(residual=[0.0]), TypeError, r"residual must be a torch.Tensor"),
    (dict(negative_slope=-0.1), ValueError, r"negative_slope must be None \(no activation\)"),
    (dict(negative_slope=float("nan")), ValueError, r"negative_slope must be None"),
    (dict(negative_slope=True), TypeError, r"negative_slope must be None or a number"),
    (dict(negative_slope="relu"), TypeError, r"negative_slope must be None or a number"),
]


@pytest.mark.parametrize("bad, error, match", BAD)
def test_bad_inputs(bad, error, match):
    args = dict(x=torch.randn(1, 16, 4, 4), weight=torch.randn(8, 16, 3, 3), bias=torch.randn(8))
    args.update(bad)
    with pytest.raises(error, match=match):
        dk.conv3x3(**args)

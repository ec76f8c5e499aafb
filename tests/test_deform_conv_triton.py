"""Triton backend of the deformable convolution vs the reference: forward and every gradient, on
CPU tensors under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU),
so shapes stay tiny. The same comparisons on CUDA tensors live in test_deform_conv_cuda.py."""

import os

import pytest
import torch
from deform_conv_cases import SHAPES, check_against_reference, make_case, run
from triton_compile import compile_for_gpu

import dzsr_kernels as dk
from dzsr_kernels.deform_conv import triton_kernel as tk
from dzsr_kernels.deform_conv.op import _packed

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="CPU tensors run Triton only under TRITON_INTERPRET=1 (conftest sets it when there is no GPU)",
)


def test_triton_backend_available_under_interpreter():
    """Guards the rest of this file: without the interpreter every test here would be meaningless."""
    assert "triton" in dk.available_backends("cpu", "deform_conv2d")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_matches_reference_float64(shape, affine):
    x, geom, weight, bias = make_case(*shape, affine=affine)
    check_against_reference("triton", x, geom, weight, bias, shape[6])


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[3]])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_reference_float32(shape, affine):
    x, geom, weight, bias = make_case(*shape, affine=affine, dtype=torch.float32)
    check_against_reference("triton", x, geom, weight, bias, shape[6])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float(dtype):
    x, geom, weight, bias = make_case(2, 4, 4, 5, 6, 3, 4, affine=True, dtype=dtype)
    check_against_reference("triton", x, geom, weight, bias, 4)


# Grouped/dense shapes whose channel tiles go to tl.dot (at least MMA_MIN_CHANNELS in and out per
# group): one tile each way; 24 in / 40 out (padded tiles, masked rows); 40 in (two input-channel
# steps of 32); two groups of 16 -> 16.
MMA_SHAPES = [
    (1, 16, 16, 5, 6, 3, 1),
    (1, 24, 40, 4, 5, 3, 1),
    (1, 40, 16, 3, 4, 3, 1),
    (1, 32, 32, 4, 5, 3, 2),
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("shape", MMA_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_core_path_matches_reference(shape, dtype):
    """Forward and every gradient of the tl.dot path (float32 split TF32, half operands with float32
    accumulation; float64 takes the FMA path at these shapes) against the float64 reference,
    tolerances TOL."""
    affine = DTYPES.index(dtype) % 2 == 0
    x, geom, weight, bias = make_case(*shape, affine=affine, dtype=dtype)
    check_against_reference("triton", x, geom, weight, bias, shape[6])


def test_mma_mode_selection():
    """tl.dot where a group has MMA_MIN_CHANNELS channels in and out, the FMA loop elsewhere and for
    float64; the operand format follows the dtype (bfloat16 multiplied in float32 under the
    interpreter)."""
    x = {dt: torch.zeros(1, dtype=dt) for dt in DTYPES}
    small = tk.MMA_MIN_CHANNELS - 1
    assert tk._mma_mode(x[torch.float32], 1, 1) == tk.FMA  # depthwise
    assert tk._mma_mode(x[torch.float32], small, 64) == tk.FMA
    assert tk._mma_mode(x[torch.float32], 64, small) == tk.FMA
    wide = tk.MMA_MIN_CHANNELS
    modes = {dt: tk._mma_mode(x[dt], wide, wide) for dt in DTYPES}
    assert modes == {
        torch.float64: tk.FMA,
        torch.float32: tk.MMA_SPLIT_TF32,
        torch.float16: tk.MMA_F16,
        torch.bfloat16: tk.MMA_BF16_AS_F32,
    }


@pytest.mark.parametrize("shape", [(2, 4, 4, 5, 6, 3, 4), (1, 6, 4, 4, 5, 3, 2), MMA_SHAPES[0]])
@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_is_read_and_written_in_place(shape, affine):
    """Channels-last x (and grad_out) go to the kernels as they are and out / dx come back
    channels-last from the kernels themselves (no conversion in op.py), equal to the NCHW run:
    depthwise, grouped, and the tensor-core path."""
    n, c, c_out, h, w, k, groups = shape
    x, geom, weight, bias = make_case(*shape, affine=affine, dtype=torch.float64)
    packed = torch.cat(geom, 1) if affine else geom[0]
    go = torch.randn(n, c_out, h, w, dtype=torch.float64)
    results = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf, gof = x.contiguous(memory_format=fmt), go.contiguous(memory_format=fmt)
        out = tk.forward(xf, packed, affine, weight, bias, groups)
        dx, dgeom, dweight = tk.backward(gof, xf, packed, affine, weight, groups)
        for t in (out, dx):
            assert t.is_contiguous(memory_format=fmt)
        results[fmt] = (out, dx, dgeom, dweight)
    for a, b in zip(results[torch.contiguous_format], results[torch.channels_last], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_without_bias():
    x, geom, weight, _ = make_case(1, 4, 2, 5, 5, 3, 2, affine=True)
    check_against_reference("triton", x, geom, weight, None, 2)


@pytest.mark.parametrize("affine", [True, False])
def test_non_contiguous_inputs(affine):
    n, c, h, w, k = 2, 4, 6, 5, 3
    x = torch.randn(n, h, w, c, dtype=torch.float64).permute(0, 3, 1, 2)  # channels-last view
    weight = torch.randn(k, k, c // 2, c, dtype=torch.float64).permute(
        3, 2, 0, 1
    )  # (C_out, C/2, k, k)
    if affine:
        big = torch.randn(n, 8, h, w + 3, dtype=torch.float64)
        big[:, :4] += torch.eye(2, dtype=torch.float64).reshape(1, 4, 1, 1)
        geom = (big[:, :4, :, 1 : w + 1], big[:, 5:7, :, 2 : w + 2])
    else:
        geom = (2 * torch.randn(n, h, w, 2 * k * k, dtype=torch.float64).permute(0, 3, 1, 2),)
    assert not x.is_contiguous() and not weight.is_contiguous() and not geom[0].is_contiguous()
    check_against_reference("triton", x, geom, weight, torch.randn(c, dtype=torch.float64), 2)


def test_far_outside_and_exact_borders():
    """Positions far outside read zero; positions exactly on the image border and on integer grid
    points follow the reference's four-corner rule (forward and gradients)."""
    n, c, h, w, k = 1, 3, 5, 6, 3
    x, _, weight, bias = make_case(n, c, c, h, w, k, c, affine=False)
    offset = torch.zeros(n, 2 * k * k, h, w, dtype=torch.float64)
    offset[:, 0::2] = torch.randint(
        -h - 1, h + 2, (n, k * k, h, w)
    ).double()  # integer rows, some on borders
    offset[:, 1::2] = torch.randint(-w - 1, w + 2, (n, k * k, h, w)).double()
    offset[:, :4, :2] = 1e4  # far outside
    offset[:, 4:6, 3:] = -7.5
    check_against_reference("triton", x, (offset,), weight, bias, c)
    out, _, _ = run("triton", x, (torch.full_like(offset, 1e4),), weight, None, c)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck(affine):
    x, geom, weight, bias = make_case(1, 2, 2, 3, 4, 3, 1, affine=affine, spread=0.7)
    inputs = [t.requires_grad_() for t in (x, *geom, weight, bias)]

    def fn(*args):
        with dk.use_backend("triton"):
            if affine:
                return dk.affine_deform_conv2d(*args, groups=1)
            return dk.deform_conv2d(*args, groups=1)

    # fast_mode (random projections of the Jacobian): each interpreted kernel launch costs ~0.1 s
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("affine", [True, False])
def test_opcheck(affine):
    k = 3
    x, geom, weight, bias = make_case(1, 2, 2, 3, 4, k, 2, affine=affine)
    packed = torch.cat(geom, 1) if affine else geom[0]
    args = (
        x.requires_grad_(),
        packed.requires_grad_(),
        affine,
        weight.requires_grad_(),
        bias,
        2,
        "triton",
    )
    torch.library.opcheck(_packed, args)


COMPILE_FOR_GPU = """
import sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dzsr_kernels.deform_conv import triton_kernel as tk

def compile_kernel(fn, types, constexprs):
    sig = {name: ("constexpr" if name in constexprs else types[name]) for name in fn.arg_names}
    consts = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", int(sys.argv[1]), 32))

CASES = [("fp32", True, True, tk.FMA), ("fp32", False, False, tk.FMA), ("fp64", False, True, tk.FMA),
         ("fp16", True, False, tk.FMA), ("fp32", False, False, tk.MMA_SPLIT_TF32),
         ("fp16", True, False, tk.MMA_F16), ("bf16", False, False, tk.MMA_BF16),
         ("fp64", True, False, tk.FMA)]
for dt, affine, depthwise, mma in CASES:
    ptr, acc_ptr = "*" + dt, "*fp64" if dt == "fp64" else "*fp32"
    acc = tl.float64 if dt == "fp64" else tl.float32
    ints = lambda *names: {n: "i32" for n in names}
    wide = mma != tk.FMA  # the tensor-core tiles triton_kernel picks for 64 x 64 channels
    compile_kernel(tk._forward_kernel,
                   dict(x_ptr=ptr, geom_ptr=ptr, w_ptr=ptr, bias_ptr=ptr, out_ptr=ptr,
                        **ints("C", "C_out", "H", "W", "c_in_g", "c_out_g", "blocks_per_group")),
                   dict(K=3, AFFINE=affine, DEPTHWISE=depthwise, HAS_BIAS=True, CL=affine, ACC=acc, MMA=mma,
                        BLOCK_C=64 if wide else 16, BLOCK_CI=32 if wide else 1, BLOCK_P=tk.BLOCK_P))
    compile_kernel(tk._input_grad_kernel,
                   dict(go_ptr=ptr, x_ptr=ptr, geom_ptr=ptr, w_ptr=ptr, dx_ptr=acc_ptr, dgeom_ptr=ptr, dw_ptr=acc_ptr,
                        **ints("C", "C_out", "H", "W", "groups", "c_in_g", "c_out_g")),
                   dict(K=3, AFFINE=affine, DEPTHWISE=depthwise, CL=affine, ACC=acc, MMA=mma,
                        BLOCK_C=32 if wide else 16, BLOCK_CO=32 if wide else 1, BLOCK_P=tk.BLOCK_P))
    compile_kernel(tk._weight_grad_kernel,
                   dict(go_ptr=ptr, x_ptr=ptr, geom_ptr=ptr, dw_ptr=acc_ptr,
                        **ints("N", "C", "C_out", "H", "W", "c_in_g", "c_out_g", "co_blocks",
                               "ci_blocks", "chunk_pixels")),
                   dict(K=3, AFFINE=affine, CL=affine, ACC=acc, MMA=mma, BLOCK_CO=64 if wide else 16,
                        BLOCK_CI=32 if wide else 16, BLOCK_P=tk.WEIGHT_BLOCK_P))
print("ok")
"""


@pytest.mark.slow
def test_kernels_compile_for_gpu():
    """The interpreter does not apply the compiler's rules (e.g. constexpr reassignment, dtype
    promotion in atomics): compile every kernel for sm_90 with Triton's bundled ptxas, in a child
    process without TRITON_INTERPRET; needs no GPU."""
    compile_for_gpu(COMPILE_FOR_GPU)

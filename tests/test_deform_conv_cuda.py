"""Deformable convolution on CUDA: (a) the CUDA sources build with nvcc wherever it exists, even
without a GPU; (b) the CUDA kernels and their host code, built for CPU threads by a small emulation
of the CUDA execution model, equal the reference (runs anywhere with a C++ compiler); (c) on a GPU,
the ``cpp`` (CUDA C++) and ``triton`` backends equal the float64 reference, forward and every
gradient, float32/float64/float16/bfloat16, gradcheck and opcheck."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deform_conv_cases import (
    SHAPES,
    TOL,
    assert_same_values,
    check_against_reference,
    make_case,
    packed_results,
    run,
)
from deform_conv_cases import emulated_ops as build_emulated_ops

import dzsr_kernels as dk
from dzsr_kernels import _ext
from dzsr_kernels.deform_conv import reference
from dzsr_kernels.deform_conv.op import _packed

ROOT = Path(__file__).resolve().parent.parent
GPU_BACKENDS = ["cpp", "triton"]

# Bigger than one block/tile in every kernel dimension: several channel blocks and pixel blocks,
# partial tiles of the weight-gradient GEMM (C_out/groups = 72, C/groups = 40), the C/groups < 8
# input-gradient path (grouped, k = 5) and a depthwise channel multiplier.
GPU_SHAPES = SHAPES + [
    (2, 64, 64, 33, 35, 3, 64),
    (2, 40, 72, 17, 19, 3, 1),
    (1, 12, 12, 20, 21, 5, 3),
    (1, 16, 48, 23, 9, 3, 16),
]

BUILD_CHECK = """
import sys, torch
from dzsr_kernels import _ext
_ext.build(with_cuda=True, build_dir=sys.argv[1])
assert torch.ops.dzsr_C.has_cuda(), "built without DZSR_WITH_CUDA"
for op in ("deform_conv2d_forward", "deform_conv2d_backward", "patch_match",
           "sliced_wasserstein_forward", "sliced_wasserstein_backward",
           "local_sliced_wasserstein_forward"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("dzsr_C::" + op, "CUDA"), op + " has no CUDA kernel"
print("ok")
"""


@pytest.mark.slow
@pytest.mark.skipif(
    _ext.cuda_home() is None, reason="nvcc not found (CUDA_HOME or /usr/local/cuda)"
)
def test_cuda_sources_build_with_nvcc(tmp_path):
    """JIT-builds all of csrc/ with its .cu files (the extension the cpp backend loads on a GPU
    machine) in a child process, loads it and checks that the CUDA kernels are registered. Needs no
    GPU: the architectures come from TORCH_CUDA_ARCH_LIST (default 9.0, the benchmark H100; set
    "8.0;9.0" to check both)."""
    env = {**os.environ, "CUDA_HOME": _ext.cuda_home(), "PYTHONPATH": str(ROOT)}
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    env.setdefault("MAX_JOBS", "2")
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_CHECK, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
    assert list(tmp_path.glob("*.so")), "no shared library produced"
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module")
def emulated_ops():
    """The CUDA kernels and host code of deform_conv_cuda.cu built for CPU threads
    (tests/cuda_emulation/cuda_emulation.h), as torch.ops.dzsr_cuda_emu.*."""
    return build_emulated_ops()


# Beyond SHAPES: several passes of the input gradient's channel loop (C/groups = 20 and 72), partial
# staged-weight chunks (C_out/groups = 72, C/groups = 40), k = 5 grouped, depthwise multiplier, many
# pixel and channel blocks.
EMULATED_SHAPES = SHAPES + [
    (1, 20, 6, 5, 7, 3, 1),
    (1, 72, 8, 4, 5, 3, 1),
    (1, 40, 72, 9, 11, 3, 1),
    (1, 12, 12, 8, 9, 5, 3),
    (2, 16, 48, 7, 9, 3, 16),
    (1, 64, 64, 9, 40, 3, 64),
]
EMULATED_CASES = [
    (shape, affine, torch.float64) for shape in EMULATED_SHAPES for affine in (True, False)
] + [
    (shape, True, dtype)
    for shape in EMULATED_SHAPES[-4:-1]
    for dtype in (torch.float32, torch.float16)
]


@pytest.mark.slow
@pytest.mark.parametrize("shape,affine,dtype", EMULATED_CASES)
def test_cuda_kernels_emulated_on_cpu(emulated_ops, shape, affine, dtype):
    """Runs every CUDA kernel (all dispatch paths: depthwise, channel multiplier, dense, grouped,
    k = 1/3/5, several blocks and partial tiles) on CPU threads and compares forward, dx, dgeom and
    dweight with the float64 reference, so the CUDA code is checked even where no GPU is."""
    n, c, c_out, h, w, k, groups = shape
    x, geom, weight, bias = make_case(*shape, affine=affine, dtype=dtype)
    packed = torch.cat(geom, 1) if affine else geom[0]
    out = emulated_ops.deform_conv2d_forward(x, packed, affine, weight, bias, groups)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    dx, dgeom, dweight = emulated_ops.deform_conv2d_backward(
        grad_out, x, packed, affine, weight, groups
    )
    leaves = [t.double().requires_grad_() for t in (x, packed, weight)]
    ref = reference.deform_conv2d(leaves[0], leaves[1], affine, leaves[2], bias.double(), groups)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out.double())
    for name, ours, want in zip(
        ("out", "dx", "dgeom", "dweight"), (out, dx, dgeom, dweight), (ref, *ref_grads)
    ):
        assert ours.dtype == dtype and ours.shape == want.shape, name
        tol = TOL[dtype] * max(1.0, want.abs().max().item())
        torch.testing.assert_close(
            ours.double(), want, rtol=TOL[dtype], atol=tol, msg=lambda m: f"{name}: {m}"
        )


# ---- Channels-last depthwise kernels (C/groups == 1, C_out == C), under the emulation ------------

CL_SHAPES = [  # n, c, h, w, k; groups = C_out = C
    (2, 8, 5, 7, 3),  # one or two channel vectors per thread, 32 (float32) pixels per warp
    (2, 64, 13, 21, 3),  # 4 threads per pixel, several blocks and grid-stride rounds in backward
    (1, 5, 6, 7, 3),  # C not a multiple of the vector width: the scalar path
    (1, 16, 7, 6, 5),  # k = 5
]
CL_CASES = [
    (shape, affine, dtype)
    for shape in CL_SHAPES
    for affine in (True, False)
    for dtype in (torch.float64, torch.float32)
] + [(shape, True, dtype) for shape in CL_SHAPES for dtype in (torch.float16, torch.bfloat16)]


def channels_last_case(n, c, h, w, k, affine, dtype, misaligned=False):
    """make_case's depthwise inputs with x channels-last; misaligned puts x's data one element past
    an allocation (not 16-byte aligned), so the kernels take their scalar path."""
    spread = 0.5 if dtype in (torch.float16, torch.bfloat16) else 1.0
    x, geom, weight, bias = make_case(
        n, c, c, h, w, k, c, affine=affine, dtype=dtype, spread=spread
    )
    packed = torch.cat(geom, 1) if affine else geom[0]
    if misaligned:
        x_cl = torch.empty(x.numel() + 1, dtype=dtype)[1:].view(n, h, w, c).permute(0, 3, 1, 2)
        x_cl.copy_(x)
    else:
        x_cl = x.contiguous(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous() and x_cl.is_contiguous(memory_format=torch.channels_last)
    return x_cl, packed, weight, bias


def emulated_results(ops, x, geom, affine, weight, bias, grad_out):
    """(out, dx, dgeom, dweight) of the emulated CUDA op, depthwise (groups = C)."""
    groups = x.shape[1]
    out = ops.deform_conv2d_forward(x, geom, affine, weight, bias, groups)
    return (out, *ops.deform_conv2d_backward(grad_out, x, geom, affine, weight, groups))


@pytest.mark.slow
@pytest.mark.parametrize("shape,affine,dtype", CL_CASES)
def test_channels_last_kernels_emulated(emulated_ops, shape, affine, dtype):
    """Channels-last x runs the channels-last depthwise kernels in place (vector and scalar paths,
    float64/32/16, bfloat16): out and dx come back channels-last, every value equals the float64
    reference within the dtype's tolerance (deform_conv_cases.TOL)."""
    x, geom, weight, bias = channels_last_case(*shape, affine=affine, dtype=dtype)
    grad_out = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    ours = emulated_results(emulated_ops, x, geom, affine, weight, bias, grad_out)
    for name, t in zip(("out", "dx"), ours):
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous(), name
    up = lambda t: t.double().contiguous()  # noqa: E731
    ref, _ = packed_results(
        "reference", up(x), up(geom), affine, up(weight), up(bias), x.shape[1], up(grad_out)
    )
    for name, a, b in zip(("out", "dx", "dgeom", "dweight"), ours, ref):
        assert a.dtype == dtype, name
        assert_same_values(name, a.double(), b, TOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
def test_channels_last_nonfinite_emulated(emulated_ops, dtype, affine, misaligned):
    """NaN/Inf in x and in the geometry (non-finite positions) propagate through the channels-last
    kernels exactly as through the reference in the same dtype: equal NaN masks, equal ±Inf
    positions, finite values close; misaligned x takes the scalar path."""
    x, geom, weight, bias = channels_last_case(2, 8, 6, 7, 3, affine, dtype, misaligned)
    x[0, 3, 2, 4] = float("nan")
    x[1, 0, 5, 6] = float("inf")
    geom[0, :, 1, 1] = float("nan")
    geom[1, 1, 3, 3] = float("inf")
    grad_out = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    ours = emulated_results(emulated_ops, x, geom, affine, weight, bias, grad_out)
    ref, _ = packed_results("reference", x, geom, affine, weight, bias, x.shape[1], grad_out)
    for name, a, b in zip(("out", "dx", "dgeom", "dweight"), ours, ref):
        assert_same_values(name, a, b.contiguous(), TOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize(
    "n,c,c_out,out_format",
    [
        # k^2 * C > the backward's shared dweight: channels-last forward, planar backward
        (1, 232, 232, torch.channels_last),
        (1, 4, 8, torch.contiguous_format),  # channel multiplier: planar forward and backward
        (0, 8, 8, torch.contiguous_format),  # N = 0: nothing to launch
    ],
)
def test_channels_last_fallbacks_emulated(emulated_ops, n, c, c_out, out_format):
    """Channels-last inputs outside the channels-last kernels' reach run the planar kernels on a
    contiguous copy (so their results are contiguous; op.py converts them) and still equal the
    reference; N = 0 returns empty results."""
    x, geom, weight, bias = make_case(n, c, c_out, 3, 4, 3, c, affine=True)
    x = x.contiguous(memory_format=torch.channels_last)
    packed = torch.cat(geom, 1)
    out = emulated_ops.deform_conv2d_forward(x, packed, True, weight, bias, c)
    grad_out = torch.randn(out.shape, dtype=torch.float64)
    grads = emulated_ops.deform_conv2d_backward(grad_out, x, packed, True, weight, c)
    ref, _ = packed_results("reference", x, packed, True, weight, bias, c, grad_out)
    for name, a, b in zip(("out", "dx", "dgeom", "dweight"), (out, *grads), ref):
        assert_same_values(name, a, b, TOL[torch.float64])
    assert out.is_contiguous(memory_format=out_format) and grads[0].is_contiguous()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_backend_available_on_cuda(backend):
    """Guards the GPU tests below: on a GPU machine both fast backends must be usable."""
    assert backend in dk.available_backends("cuda", "deform_conv2d")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(backend, shape, affine, dtype):
    x, geom, weight, bias = make_case(*shape, affine=affine, dtype=dtype, device="cuda")
    check_against_reference(backend, x, geom, weight, bias, shape[6])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [GPU_SHAPES[-4], GPU_SHAPES[-3]])
def test_half_precision(backend, dtype, shape):
    """Half inputs accumulate in float32; tolerance (deform_conv_cases.TOL) is a few units of the
    half type's last place relative to the largest reference value."""
    x, geom, weight, bias = make_case(*shape, affine=True, dtype=dtype, device="cuda", spread=0.5)
    check_against_reference(backend, x, geom, weight, bias, shape[6])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c", [64, 5], ids=["vector", "scalar"])
def test_channels_last_on_gpu(backend, dtype, c):
    """Channels-last depthwise x (the cpp backend's channels-last kernels; C = 5 their scalar path)
    equals the float64 reference, and out and dx come back channels-last on every backend."""
    x, geom, weight, bias = make_case(
        2, c, c, 17, 19, 3, c, affine=True, dtype=dtype, device="cuda", spread=0.5
    )
    x = x.contiguous(memory_format=torch.channels_last)
    check_against_reference(backend, x, geom, weight, bias, c)
    out, grads, _ = run(backend, x, geom, weight, bias, c)
    for name, t in (("out", out), ("dx", grads[0])):
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous(), name


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_non_contiguous_and_no_bias(backend):
    n, c, h, w, k = 2, 8, 13, 11, 3
    x = torch.randn(n, h, w, c, dtype=torch.float64, device="cuda").permute(0, 3, 1, 2)
    weight = torch.randn(k, k, 1, c, dtype=torch.float64, device="cuda").permute(3, 2, 0, 1)
    big = torch.randn(n, 8, h, w + 3, dtype=torch.float64, device="cuda")
    geom = (big[:, :4, :, 1 : w + 1], big[:, 5:7, :, 2 : w + 2])
    assert not x.is_contiguous() and not weight.is_contiguous() and not geom[0].is_contiguous()
    check_against_reference(backend, x, geom, weight, None, c)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_far_outside_and_exact_borders(backend):
    n, c, h, w, k = 2, 6, 9, 10, 3
    x, _, weight, bias = make_case(n, c, c, h, w, k, c, affine=False, device="cuda")
    offset = torch.zeros(n, 2 * k * k, h, w, dtype=torch.float64, device="cuda")
    offset[:, 0::2] = torch.randint(-h - 1, h + 2, (n, k * k, h, w), device="cuda").double()
    offset[:, 1::2] = torch.randint(-w - 1, w + 2, (n, k * k, h, w), device="cuda").double()
    offset[:, :4, :2] = 1e4
    check_against_reference(backend, x, (offset,), weight, bias, c)
    out, _, _ = run(backend, x, (torch.full_like(offset, -1e4),), weight, None, c)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("groups,c_out", [(2, 2), (1, 3)])
def test_gradcheck(backend, affine, groups, c_out):
    x, geom, weight, bias = make_case(
        1, 2, c_out, 4, 5, 3, groups, affine=affine, device="cuda", spread=0.7
    )
    inputs = [t.requires_grad_() for t in (x, *geom, weight, bias)]

    def fn(*args):
        with dk.use_backend(backend):
            if affine:
                return dk.affine_deform_conv2d(*args, groups=groups)
            return dk.deform_conv2d(*args, groups=groups)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("affine", [True, False])
def test_opcheck(backend, affine):
    x, geom, weight, bias = make_case(2, 4, 4, 5, 6, 3, 2, affine=affine, device="cuda")
    packed = torch.cat(geom, 1) if affine else geom[0]
    args = (
        x.requires_grad_(),
        packed.requires_grad_(),
        affine,
        weight.requires_grad_(),
        bias,
        2,
        backend,
    )
    torch.library.opcheck(_packed, args)


def test_gpu_benchmark_runs_or_says_it_needs_a_gpu():
    """Without CUDA the GPU benchmark exits with a clear message; with CUDA its --quick run prints
    the table for every implementation."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_deform_conv_gpu", "--quick", "--reps", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if torch.cuda.is_available():
        assert proc.returncode == 0, proc.stderr[-4000:]
        for impl in ("cpp", "triton", "torchvision"):
            assert f"| {impl} |" in proc.stdout
        assert "copy bandwidth" in proc.stdout
    else:
        assert proc.returncode != 0
        assert "needs a CUDA GPU" in proc.stderr

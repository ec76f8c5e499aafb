"""Sliced-Wasserstein ``triton`` backend against the reference: tiny shapes, so it runs under the
Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1 without a GPU) and natively on a GPU.
Tolerances as in test_sliced_wasserstein.py (float64 1e-12, float32 1e-5 / 1e-6 of the gradient scale).
float32 rows of L <= 4096 are sorted in one program (``_sort_compare_row_kernel``): there the signs
must equal those of a stable torch.sort element for element, ties and NaNs included."""

import pytest
import torch
from sliced_wasserstein_oracle import check_forward_outputs, require_backend, stable_signs
from triton_compile import compile_for_gpu

import dzsr_kernels as dk
from dzsr_kernels.sliced_wasserstein import draw_projections, sliced_wasserstein_loss
from dzsr_kernels.sliced_wasserstein import op as sw_op

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _run(backend, u, v, proj):
    u = u.detach().requires_grad_()
    v = v.detach().requires_grad_(v.requires_grad)
    with dk.use_backend(backend):
        loss = sliced_wasserstein_loss(u, v, proj=proj)
    return loss.detach(), torch.autograd.grad(loss, (u, v) if v.requires_grad else (u,))


@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (1, 17, 5, 9)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("v_grad", [False, True])
def test_triton_matches_reference(shape, dtype, v_grad):
    u = torch.randn(shape, dtype=dtype, device=DEVICE)
    v = (torch.randn(shape, dtype=dtype, device=DEVICE) + 0.2).requires_grad_(v_grad)
    proj = draw_projections(shape[1], shape[1] // 2, device=DEVICE, dtype=dtype)
    loss, grads = _run("triton", u, v, proj)
    ref_loss, ref_grads = _run("reference", u, v, proj)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=rtol)
    scale = 1.0 / (shape[0] * proj.shape[0] * shape[2] * shape[3])
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize(
    "dtype, shape",
    [
        (torch.float32, (2, 3, 3, 5)),  # on chip, BLOCK 16
        (torch.float32, (1, 3, 64, 64)),  # on chip, L = ON_CHIP_MAX
        (torch.float32, (1, 3, 64, 65)),  # torch.sort fallback
        (torch.float64, (2, 3, 3, 5)),  # torch.sort fallback (float64)
    ],
)
def test_triton_ties_and_nan_exact(dtype, shape):
    """Small integers on axis directions (long runs of ties), -0.0 and NaNs in u and v: the loss and
    the signs against the reference, and on chip exactly the stable-sort signs."""
    u = torch.randint(-2, 3, shape).to(dtype)
    v = torch.randint(-2, 3, shape).to(dtype)
    u.view(-1)[::7] = -0.0
    u.view(-1)[5::11] = float("nan")
    v.view(-1)[3::13] = float("nan")
    u, v, proj = u.to(DEVICE), v.to(DEVICE), torch.eye(3, dtype=dtype, device=DEVICE)[:2]
    require_backend("triton", DEVICE)
    loss, sign_u, sign_v = sw_op._forward(u, v, proj, True, "triton")
    check_forward_outputs(loss.cpu(), sign_u.cpu(), sign_v.cpu(), u.cpu(), v.cpu(), proj.cpu())
    if dtype == torch.float32 and shape[2] * shape[3] <= sw_op._triton_kernel().ON_CHIP_MAX:
        exact_u, exact_v = stable_signs(u, v, proj)
        assert torch.equal(sign_u, exact_u) and torch.equal(sign_v, exact_v)
    _, sign_u_only, no_v = sw_op._forward(u, v, proj, False, "triton")
    assert no_v.shape == (0,) and torch.equal(sign_u_only, sign_u)


def test_triton_half_and_non_contiguous():
    u = torch.randn(2, 6, 7, 5, device=DEVICE).transpose(2, 3).to(torch.float16)
    v = torch.randn(2, 6, 5, 7, device=DEVICE).to(torch.float16)
    proj = draw_projections(6, 3, device=DEVICE)
    loss, (gu,) = _run("triton", u, v, proj)
    ref_loss, (ru,) = _run("reference", u, v, proj)
    assert loss.dtype == torch.float16 and gu.dtype == torch.float16
    torch.testing.assert_close(loss, ref_loss, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gu, ru, rtol=1e-3, atol=1e-3 / (2 * 3 * 35))


def test_triton_opcheck():
    u, v = torch.randn(1, 4, 3, 3, device=DEVICE), torch.randn(1, 4, 3, 3, device=DEVICE)
    proj = draw_projections(4, 2, device=DEVICE)
    torch.library.opcheck(
        sw_op._forward, (u, v, proj, True, "triton"), test_utils=("test_schema", "test_faketensor")
    )
    sign = torch.randint(-1, 2, (1, 2, 9), dtype=torch.int8, device=DEVICE)
    torch.library.opcheck(
        sw_op._backward_op,
        (sign, proj * 0.1, "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )


COMPILE_FOR_GPU = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dzsr_kernels.sliced_wasserstein import triton_kernel as tk

def compile_kernel(fn, types, constexprs, num_warps=4):
    sig = {name: ("constexpr" if name in constexprs else types[name]) for name in fn.arg_names}
    consts = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", int(sys.argv[1]), 32),
                   options={"num_warps": num_warps})

for block in (256, 1024, tk.ON_CHIP_MAX):  # with the launch's num_warps
    for has_v in (False, True):
        compile_kernel(tk._sort_compare_row_kernel,
                       dict(pu_ptr="*fp32", pv_ptr="*fp32", sign_u_ptr="*i8", sign_v_ptr="*i8",
                            row_sum_ptr="*fp64", length="i32"),
                       dict(HAS_V=has_v, BLOCK=block), num_warps=min(16, max(1, block // 256)))

for dt in ("fp32", "fp64"):
    for has_v in (False, True):
        compile_kernel(tk._sorted_compare_kernel,
                       dict(su_ptr="*" + dt, sv_ptr="*" + dt, iu_ptr="*i64", iv_ptr="*i64", sign_u_ptr="*i8",
                            sign_v_ptr="*i8", partial_ptr="*" + dt, length="i32", nblocks="i32"),
                       dict(HAS_V=has_v, BLOCK=tk.SCATTER_BLOCK))
    fp64 = dt == "fp64"
    bm, bn, bk = (16, 32, 16) if fp64 else (64, 64, 8)
    compile_kernel(tk._sign_gemm_kernel,
                   dict(m_ptr="*" + dt, sign_ptr="*i8", out_ptr="*" + dt, channels="i32", num_proj="i32", length="i32"),
                   dict(IS_FP64=fp64, BM=bm, BN=bn, BK=bk))
print("ok")
"""


@pytest.mark.slow
def test_kernels_compile_for_gpu():
    """The interpreter does not apply the GPU compiler's rules: compile the kernels for sm_90 in a
    child process without TRITON_INTERPRET (needs no GPU)."""
    compile_for_gpu(COMPILE_FOR_GPU)

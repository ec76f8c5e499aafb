"""Triton patch matching against the brute force (Triton interpreter on CPU: tiny shapes only), in
both precisions (``fast`` also against a float64 model of its contract and within its proven
bound), on non-finite/extreme/empty inputs; its fake, opcheck and torch.compile; its compilation
for sm_90 with tensor-core instructions and no local memory in the SASS."""

from __future__ import annotations

import pytest
import torch
from patch_match_oracle import (
    NON_FINITE_CASES,
    assert_fake_equals_real,
    check_compile_fullgraph,
    check_match,
    first_max_index,
    layout_inputs,
    non_finite_case,
    one_hot_map,
    run,
)
from triton_compile import compile_for_gpu

from dzsr_kernels._backend import unavailable_reason
from dzsr_kernels.patch_match import reference, triton_kernel
from dzsr_kernels.patch_match.precision import fast_score_error_bound, split_tf32

pytestmark = pytest.mark.skipif(
    unavailable_reason("triton", "cuda" if torch.cuda.is_available() else "cpu") is not None,
    reason="Triton cannot run here (needs a GPU or TRITON_INTERPRET=1, set by conftest)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(
    "shape",
    [(1, 4, 3, 3, 3, 3), (2, 5, 6, 7, 8, 5), (1, 40, 9, 13, 11, 10), (1, 6, 20, 40, 17, 30)],
)  # the last: several query and reference tiles along both axes, partial ones at the edges
def test_matches_bruteforce(shape):
    n, c, hq, wq, hr, wr = shape
    query, ref = torch.randn(n, c, hq, wq, device=DEVICE), torch.randn(n, c, hr, wr, device=DEVICE)
    check_match(*run("triton", query, ref), query, ref)


@pytest.mark.parametrize("p", [1, 5])
def test_other_patch_sizes(p):
    query, ref = torch.randn(1, 6, 9, 8, device=DEVICE), torch.randn(1, 6, 7, 10, device=DEVICE)
    check_match(*run("triton", query, ref, p), query, ref, p)


def test_recovers_known_shift():
    image = torch.randn(1, 8, 14, 15, device=DEVICE)
    query, ref = image[:, :, 3:10, 2:11], image
    score, index = run("triton", query, ref)
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    assert torch.equal(index[0].cpu(), (ys + 3) * 13 + xs + 2)
    torch.testing.assert_close(score, torch.ones_like(score), atol=1e-5, rtol=0)


def test_ties_go_to_smallest_index():
    query, ref = (
        one_hot_map(1, 3, 6, 7).to(DEVICE),
        one_hot_map(1, 3, 12, 13).to(DEVICE),
    )  # > 1 reference block
    _, index = run("triton", query, ref)
    assert torch.equal(index.reshape(1, -1).cpu(), first_max_index(query.cpu(), ref.cpu()))


def test_zero_pixels():
    query, ref = torch.randn(2, 6, 7, 8, device=DEVICE), torch.randn(2, 6, 6, 9, device=DEVICE)
    query[:, :, 1:4, 2:5] = 0
    ref[:, :, :, 4] = 0
    score, index = run("triton", query, ref)
    assert (
        not torch.isnan(score).any() and score[:, 1, 2].eq(0).all() and index[:, 1, 2].eq(0).all()
    )
    check_match(score, index, query, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_and_non_contiguous(dtype):
    query = torch.randn(1, 10, 7, 16, device=DEVICE).to(dtype)[:, ::2, :, ::2]
    ref = (
        torch.randn(1, 5, 8, 6, device=DEVICE)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last)
    )
    check_match(*run("triton", query, ref), query, ref)


def fast_tol(c: int, p: int = 3) -> float:
    """check_match's tolerance for ``fast``: scores move by at most the proven bound, so an index
    can differ from the exact one only where the best beats the runner-up by at most twice it."""
    return 2 * fast_score_error_bound(c, p)


@pytest.mark.parametrize("shape", [(1, 32, 7, 8, 8, 7), (2, 40, 11, 19, 9, 10)])
def test_fast_within_its_proven_bound(shape):
    n, c, hq, wq, hr, wr = shape
    query, ref = torch.randn(n, c, hq, wq, device=DEVICE), torch.randn(n, c, hr, wr, device=DEVICE)
    score, index = run("triton", query, ref, precision="fast")
    check_match(score, index, query, ref, tol=fast_tol(c))
    exact, _ = run("triton", query, ref, precision="exact")
    error = (score - exact).abs().max().item()
    assert 0 < error <= fast_score_error_bound(c, 3)  # another computation, within the bound


def _patches(u, p):
    """(N,H,W,C) -> float64 (N, patches, p²C) patch vectors."""
    n, c = u.shape[0], u.shape[3]
    x = u.double().permute(0, 3, 1, 2).unfold(2, p, 1).unfold(3, p, 1)  # N,C,Hp,Wp,p,p
    return x.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c * p * p)


def contract_model(uq, ur, inv_q, inv_r, p):
    """float64 (N, Nq, Nr) values of the fast contract: split-TF32 products hi·hi + hi·lo +
    lo·hi summed exactly, times the float32 inverse patch norms (score = max_r val * inv_q)."""
    (hq, lq), (hr, lr) = (tuple(_patches(t, p) for t in split_tf32(u)) for u in (uq, ur))
    dots = sum(torch.einsum("nqd,nrd->nqr", a, b) for a, b in ((hq, hr), (hq, lr), (lq, hr)))
    n = uq.shape[0]
    return dots * inv_r.double().reshape(n, 1, -1) * inv_q.double().reshape(n, -1, 1)


@pytest.mark.parametrize("p", [1, 3, 5])
def test_fast_kernel_computes_its_contract(p):
    """The kernel on prepared inputs against the float64 model of the contract: the float32
    accumulation is all that differs."""
    query, ref = torch.randn(2, 24, 10, 21, device=DEVICE), torch.randn(2, 24, 13, 9, device=DEVICE)
    prepared = reference.prepare(query, ref, p, torch.float32)
    model = contract_model(*(t.cpu() for t in prepared), p)
    score, index = triton_kernel.match(*prepared, p, "fast")
    s, i = score.reshape(2, -1).double().cpu(), index.reshape(2, -1).cpu()
    best = model.max(dim=2).values
    torch.testing.assert_close(s, best, atol=1e-5, rtol=0)
    assert (model.gather(2, i.unsqueeze(2)).squeeze(2) >= best - 1e-5).all()


def test_aliases_give_the_same_results():
    query, ref = torch.randn(1, 9, 7, 9, device=DEVICE), torch.randn(1, 9, 8, 6, device=DEVICE)
    for alias, name in (("float32", "exact"), ("tf32", "fast")):
        a, b = run("triton", query, ref, precision=alias), run("triton", query, ref, precision=name)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("case", NON_FINITE_CASES)
def test_non_finite_extreme_and_empty(case, precision):
    query, ref = non_finite_case(case, c=3, device=DEVICE, hq=6, wq=5, hr=5, wr=6)
    check_match(
        *run("triton", query, ref, precision=precision),
        query,
        ref,
        tol=fast_tol(3) if precision == "fast" else 2e-5,
    )


LAYOUTS = ("contiguous", "channels_last", "non_contiguous", "empty_batch")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_equals_triton_outputs(layout):
    assert_fake_equals_real((*layout_inputs(layout, DEVICE), 3, "exact", "triton"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(layout):
    args = (*layout_inputs(layout, DEVICE, nan=False), 3, "exact", "triton")
    torch.library.opcheck(torch.ops.dzsr.patch_match.default, args)


def test_compile_fullgraph():
    check_compile_fullgraph("triton", DEVICE)


COMPILE_FOR_GPU = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dzsr_kernels.patch_match import triton_kernel as tk

fn = tk._match_kernel
ints = ("C", "Hq", "Wq", "Hr", "Wr", "hpq", "wpq", "hpr", "wpr", "q_tiles_x", "r_tiles_x", "r_tiles")
types = dict(uq_ptr="*fp32", ur_ptr="*fp32", inv_q_ptr="*fp32", inv_r_ptr="*fp32",
             score_ptr="*fp32", index_ptr="*i64", **{name: "i32" for name in ints})
for p in (1, 3, 5):
    qy, qx, ry, rx = tk.tile_shape(p)
    for split, block_c in ((False, tk.BLOCK_C_EXACT), (True, tk.BLOCK_C_FAST)):
        consts = dict(P=p, SPLIT_TF32=split, QY=qy, QX=qx, RY=ry, RX=rx, BLOCK_C=block_c)
        sig = {name: ("constexpr" if name in consts else types[name]) for name in fn.arg_names}
        where = {(fn.arg_names.index(k),): v for k, v in consts.items()}
        triton.compile(ASTSource(fn, sig, constexprs=where),
                       target=GPUTarget("cuda", int(sys.argv[1]), 32),
                       options=dict(num_warps=tk.NUM_WARPS))
print("ok")
"""


@pytest.mark.slow
def test_kernel_compiles_for_gpu():
    """The interpreter does not apply the compiler's rules (layouts of the reshape and gathers,
    tl.dot shapes): compile the kernel in both precisions for sm_90 with Triton's bundled ptxas, in
    a child process without TRITON_INTERPRET; needs no GPU. (SASS evidence: static_evidence.)"""
    compile_for_gpu(COMPILE_FOR_GPU)

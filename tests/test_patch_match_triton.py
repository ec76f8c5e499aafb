"""Triton patch matching against the brute force (Triton interpreter on CPU: tiny shapes only), in
float32 and tf32, on non-finite/extreme/empty inputs; its fake, opcheck and torch.compile."""

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

from dzsr_kernels._backend import unavailable_reason

pytestmark = pytest.mark.skipif(
    unavailable_reason("triton", "cuda" if torch.cuda.is_available() else "cpu") is not None,
    reason="Triton cannot run here (needs a GPU or TRITON_INTERPRET=1, set by conftest)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", [(1, 4, 3, 3, 3, 3), (2, 5, 6, 7, 8, 5), (1, 40, 9, 13, 11, 10)])
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


def test_tf32_opt_in_agrees_loosely():
    query, ref = torch.randn(1, 32, 7, 8, device=DEVICE), torch.randn(1, 32, 8, 7, device=DEVICE)
    score, index = run("triton", query, ref, precision="tf32")
    check_match(score, index, query, ref, tol=5e-3)  # TF32 keeps 10 mantissa bits


@pytest.mark.parametrize("precision", ["float32", "tf32"])
@pytest.mark.parametrize("case", NON_FINITE_CASES)
def test_non_finite_extreme_and_empty(case, precision):
    query, ref = non_finite_case(case, c=3, device=DEVICE, hq=6, wq=5, hr=5, wr=6)
    check_match(
        *run("triton", query, ref, precision=precision),
        query,
        ref,
        tol=5e-3 if precision == "tf32" else 2e-5,
    )


LAYOUTS = ("contiguous", "channels_last", "non_contiguous", "empty_batch")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_equals_triton_outputs(layout):
    assert_fake_equals_real((*layout_inputs(layout, DEVICE), 3, "float32", "triton"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(layout):
    args = (*layout_inputs(layout, DEVICE, nan=False), 3, "float32", "triton")
    torch.library.opcheck(torch.ops.dzsr.patch_match.default, args)


def test_compile_fullgraph():
    check_compile_fullgraph("triton", DEVICE)

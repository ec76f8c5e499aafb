"""The CUDA patch-match kernel (csrc/patch_match/patch_match_cuda.cu) run on CPU threads through the
test-only CUDA execution-model stand-in (tests/cuda_emulation/), against the brute force: the CUDA code
is checked even where no GPU is (query and reference tiling, partial tiles, channel chunks, ties,
non-finite and extreme values, empty batches). The kernel runs inside ``reference.match_prepared``,
exactly as the cpp backend calls it on a GPU."""

from __future__ import annotations

import pytest
import torch
from patch_match_oracle import (
    NON_FINITE_CASES,
    check_match,
    emulated_cuda_kernel,
    first_max_index,
    non_finite_case,
    one_hot_map,
)

from dzsr_kernels.patch_match import reference


@pytest.fixture(scope="module")
def emulated():
    return emulated_cuda_kernel()


def run(kernel, query, ref, p=3):
    return reference.match_prepared(*reference.prepare(query, ref, p, torch.float32), p, kernel)


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape",
    [
        (1, 4, 3, 3, 3, 3, 3),
        (2, 5, 6, 7, 8, 5, 3),
        (1, 20, 12, 17, 14, 12, 3),
        (1, 6, 9, 8, 7, 10, 5),
        (1, 3, 10, 18, 9, 9, 1),
        (1, 2, 9, 9, 8, 8, 7),
        (2, 40, 20, 30, 25, 22, 3),
    ],
)
def test_emulated_cuda_matches_bruteforce(emulated, shape):
    n, c, hq, wq, hr, wr, p = (
        shape  # (1, 20, 12, 17, ...): 2x2 query tiles, 2x2 reference tiles, 2 channel chunks
    )
    query, ref = torch.randn(n, c, hq, wq), torch.randn(n, c, hr, wr)
    check_match(*run(emulated, query, ref, p), query, ref, p)


@pytest.mark.slow
def test_emulated_cuda_ties_and_zero_pixels(emulated):
    query, ref = one_hot_map(1, 3, 8, 9), one_hot_map(1, 3, 12, 11)  # ties across reference tiles
    _, index = run(emulated, query, ref)
    assert torch.equal(index.reshape(1, -1), first_max_index(query, ref))
    query = torch.randn(1, 5, 7, 7)
    query[:, :, 1:4, 2:5] = 0
    score, index = run(emulated, query, torch.randn(1, 5, 9, 8))
    assert score[:, 1, 2].eq(0).all() and index[:, 1, 2].eq(0).all() and not score.isnan().any()


@pytest.mark.slow
@pytest.mark.parametrize("case", NON_FINITE_CASES)
def test_emulated_cuda_non_finite_extreme_and_empty(emulated, case):
    query, ref = non_finite_case(case)
    check_match(*run(emulated, query, ref), query, ref)


def test_emulated_cuda_rejects_large_patches(emulated):
    with pytest.raises(RuntimeError, match="patch_size <= 7"):
        run(emulated, torch.randn(1, 2, 9, 9), torch.randn(1, 2, 9, 9), 9)

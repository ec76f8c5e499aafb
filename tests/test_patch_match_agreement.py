"""The ``fast`` precision against ``exact`` on real feature maps (the shipped demo checkpoint's
extractor on every bundled sample, as ``dzsr sr`` matches them), with the fast contract's operand
rounding applied in torch on the CPU (docs/design.md#patch-match), and on a GPU the Triton kernel
itself: at least 99.9% of the indices equal, every score within the proven bound. That the kernel
computes this contract is tested in test_patch_match_triton.py; BENCHMARKS.md has the numbers
(``python -m benchmarks.bench_patch_match --agreement``)."""

from __future__ import annotations

import pytest

from benchmarks.bench_patch_match import (
    agreement,
    bundled_feature_pairs,
    emulated_fast,
    kernel_fast,
)
from dzsr.sample import SAMPLE_NAMES
from dzsr_kernels._backend import unavailable_reason
from dzsr_kernels.patch_match.precision import fast_score_error_bound

MIN_INDEX_AGREEMENT = 0.999


@pytest.mark.slow
def test_fast_agrees_with_exact_on_real_features():
    pairs = bundled_feature_pairs()
    results = [emulated_fast(query, ref) for _, query, ref in pairs]
    share, max_score_error, patches = agreement(results)
    assert len(pairs) == len(SAMPLE_NAMES) and patches > 0
    assert share >= MIN_INDEX_AGREEMENT, f"{100 * share:.3f}% of {patches} indices agree"
    assert max_score_error <= fast_score_error_bound(pairs[0][1].shape[1], 3)


@pytest.mark.gpu
def test_triton_fast_agrees_with_exact_on_real_features_on_cuda():
    """The same on the tensor cores: the Triton kernel in both precisions."""
    pairs = bundled_feature_pairs()
    results = [kernel_fast(query.cuda(), ref.cuda()) for _, query, ref in pairs]
    share, max_score_error, patches = agreement(results)
    assert share >= MIN_INDEX_AGREEMENT, f"{100 * share:.3f}% of {patches} indices agree"
    assert max_score_error <= fast_score_error_bound(pairs[0][1].shape[1], 3)


@pytest.mark.slow
@pytest.mark.skipif(
    unavailable_reason("triton", "cpu") is not None, reason="needs TRITON_INTERPRET=1 (conftest)"
)
def test_triton_fast_kernel_on_real_features_under_the_interpreter():
    """The kernel itself (not the torch emulation) on the smallest sample's real features."""
    name, query, ref = min(bundled_feature_pairs(), key=lambda pair: pair[1].numel())
    share, max_score_error, _ = agreement([kernel_fast(query, ref)])
    assert share >= MIN_INDEX_AGREEMENT, f"{name}: {100 * share:.3f}% of the indices agree"
    assert max_score_error <= fast_score_error_bound(query.shape[1], 3)

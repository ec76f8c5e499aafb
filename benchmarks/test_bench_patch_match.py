"""pytest-benchmark timings of patch matching on a small map (``pytest benchmarks/test_bench_patch_match.py``)."""

import pytest

from benchmarks.bench_patch_match import matmul_case, op_case

SIZE = {"h": 40, "w": 48, "c": 64}


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_patch_match(benchmark, backend):
    score, index = benchmark(op_case(backend, **SIZE))
    assert score.shape == index.shape == (1, 38, 46)


def test_naive_matmul(benchmark):
    benchmark(matmul_case(**SIZE))

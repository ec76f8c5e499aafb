"""pytest-benchmark of the SW loss forward+backward on a small shape (run: pytest benchmarks/)."""

import pytest

from benchmarks.bench_sliced_wasserstein import make_case


@pytest.mark.parametrize("impl", ["reference", "authors", "cpp"])
def test_sw_forward_backward(benchmark, impl):
    benchmark(make_case((2, 64, 24, 24), impl))

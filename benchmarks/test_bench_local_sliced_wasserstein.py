"""pytest-benchmark of the LOSW loss forward+backward on a small shape (run: pytest benchmarks/)."""

import pytest

from benchmarks.bench_local_sliced_wasserstein import make_case


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_losw_forward_backward(benchmark, impl):
    benchmark(make_case((2, 64, 24, 24), 4, impl))

"""pytest-benchmark of the 3x3 convolution forward on a small shape (run: pytest benchmarks/)."""

import pytest

from benchmarks.bench_conv3x3 import make_case


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_conv3x3_forward(benchmark, impl):
    benchmark(make_case((1, 32, 32, 24, 20), impl))

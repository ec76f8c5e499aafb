"""pytest-benchmark of the 3x3 convolution forward on a small shape (run: pytest benchmarks/)."""

import pytest
import torch

from benchmarks.bench_conv3x3 import make_case


@pytest.mark.parametrize("epilogue", [None, "relu", "residual"])
@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_conv3x3_forward(benchmark, impl, epilogue):
    benchmark(make_case((1, 32, 32, 24, 20), impl, epilogue))


@pytest.mark.parametrize("epilogue", [None, "relu", "residual"])
def test_cases_compute_the_same(epilogue):
    """The benchmark's two sides agree, also below the kernel's channel threshold."""
    for shape in [(1, 32, 32, 24, 20), (1, 6, 8, 9, 7)]:
        ref, cpp = (make_case(shape, impl, epilogue)() for impl in ("reference", "cpp"))
        torch.testing.assert_close(cpp, ref, rtol=1e-4, atol=1e-4)

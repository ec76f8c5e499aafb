"""pytest-benchmark of the data pipeline and SSIM on small sizes (run: pytest benchmarks/)."""

import pytest

from benchmarks.bench_data import make_batch, make_ssim


def test_training_batch(benchmark):
    benchmark(make_batch(64, 80, batch=4))


@pytest.mark.parametrize("impl", ["ours", "skimage"])
def test_ssim(benchmark, impl):
    benchmark(make_ssim(32, 40, impl))

"""pytest-benchmark timings of the deformable convolution at the authors' training shape, forward +
backward (``pytest benchmarks/test_bench_deform_conv.py``); the full table is bench_deform_conv.py."""

import pytest

from benchmarks.bench_deform_conv import make

SHAPE = {"n": 16, "c": 64, "h": 48, "w": 48}


@pytest.mark.parametrize("impl", ["cpp", "torchvision"])
@pytest.mark.parametrize("groups", [64, 1], ids=["depthwise", "dense"])
def test_deform_conv_fwd_bwd(benchmark, impl, groups):
    benchmark(make(impl, groups=groups, backward=True, **SHAPE))


@pytest.mark.parametrize("impl", ["p0", "conv1x1"])
def test_p0_path(benchmark, impl):
    benchmark(make(impl, groups=64, backward=True, **SHAPE))

"""pytest-benchmark of the deformable conv forward+backward on a GPU (run: pytest benchmarks/);
skipped without CUDA. The markdown table with bandwidth and memory is bench_deform_conv_gpu.py."""

import pytest
import torch

from benchmarks.bench_deform_conv_gpu import IMPLS, make

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("groups", [64, 1], ids=["depthwise", "dense"])
@pytest.mark.parametrize("impl", IMPLS)
def test_deform_conv_gpu_forward_backward(benchmark, impl, groups):
    thunk = make(impl, 4, 64, 48, 48, groups, backward=True, device="cuda")
    thunk()  # compile (Triton) and warm up outside the timing

    def synced():
        thunk()
        torch.cuda.synchronize()

    benchmark(synced)

"""Deformable convolution on a CUDA GPU: dzsr ``cpp`` (CUDA C++) and ``triton`` vs torchvision.

torchvision is fed the offsets users build from A, b, (dy, dx) = A g + b - g (the authors' way),
built inside its timed call. Times: CUDA events, median of interleaved repetitions after warm-up
(the warm-up also compiles the Triton kernels). Peak memory: ``torch.cuda.max_memory_allocated``
during one call beyond what was allocated before it; "extra" also subtracts the output and the
gradients of x, A, b, weight. Bandwidth: the bytes any implementation must move (read x, A, b, write
out; backward also reads grad_out, x, A, b and writes dx, dA, db) divided by the time, against the
device's copy bandwidth measured in the same run (``dst.copy_(src)`` of 1 GiB: 2 GiB moved).
Rows marked channels-last store x and grad_out channels-last (the CUDA channels-last depthwise
kernels, issue 13); bf16 rows (bytes counted at 2 per element) have no torchvision entry (it has no
bfloat16 kernel): compare them with the float32 channels-last row above them.

    python -m benchmarks.bench_deform_conv_gpu [--quick] [--reps 20]
"""

from __future__ import annotations

import argparse
import sys

import torch

import dzsr_kernels as dk
from benchmarks import _harness as H
from benchmarks.bench_deform_conv import make, output_and_grad_bytes

IMPLS = ("cpp", "triton", "torchvision")


def essential_bytes(n, c, h, w, backward, elem=4):
    """Bytes that must cross DRAM at least once: forward reads x, A, b and writes out; backward
    reads grad_out, x, A, b and writes dx, dA, db (weights are negligible)."""
    plane = n * h * w
    fwd = plane * (c + 6 + c)
    bwd = plane * (c + c + 6 + c + 6)
    return elem * (fwd + (bwd if backward else 0))


def copy_bandwidth(reps: int = 10) -> float:
    """Device copy bandwidth in bytes/s: median of ``dst.copy_(src)`` on 1 GiB (2 GiB moved)."""
    src = torch.empty(2**28, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    t = H.time_interleaved({"copy": lambda: dst.copy_(src)}, reps=reps, warmup=2, device="cuda")[
        "copy"
    ]
    src = dst = None  # free the 2 GiB before the next case
    torch.cuda.empty_cache()
    return 2 * 2**30 / t


CL = {"channels_last": True}  # x and grad_out channels-last: the CUDA channels-last kernels
CL_BF16 = {"channels_last": True, "dtype": torch.bfloat16}  # torchvision has no bfloat16 kernel
CASES = [  # label, (n, c, h, w, groups), backward, make() options (default float32, NCHW)
    ("(16,64,48,48) depthwise fwd", (16, 64, 48, 48, 64), False, {}),
    ("(16,64,48,48) depthwise fwd+bwd", (16, 64, 48, 48, 64), True, {}),
    ("(16,64,48,48) depthwise fwd+bwd channels-last", (16, 64, 48, 48, 64), True, CL),
    ("(16,64,48,48) dense fwd", (16, 64, 48, 48, 1), False, {}),
    ("(16,64,48,48) dense fwd+bwd", (16, 64, 48, 48, 1), True, {}),
    ("(1,64,512,512) depthwise fwd", (1, 64, 512, 512, 64), False, {}),
    ("(1,64,512,512) depthwise fwd+bwd", (1, 64, 512, 512, 64), True, {}),
    ("(1,64,512,512) depthwise fwd+bwd channels-last", (1, 64, 512, 512, 64), True, CL),
    ("(1,64,512,512) depthwise fwd+bwd channels-last bf16", (1, 64, 512, 512, 64), True, CL_BF16),
    ("(1,64,1024,1024) depthwise fwd", (1, 64, 1024, 1024, 64), False, {}),
    ("(1,64,1024,1024) depthwise fwd channels-last", (1, 64, 1024, 1024, 64), False, CL),
]
QUICK = [
    ("(2,16,24,24) depthwise fwd+bwd", (2, 16, 24, 24, 16), True, {}),
    ("(2,16,24,24) depthwise fwd+bwd channels-last bf16", (2, 16, 24, 24, 16), True, CL_BF16),
    ("(2,16,24,24) dense fwd+bwd", (2, 16, 24, 24, 1), True, {}),
    ("(1,16,128,128) depthwise fwd channels-last", (1, 16, 128, 128, 16), False, CL),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS)
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "bench_deform_conv_gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
            "the CPU benchmark is benchmarks/bench_deform_conv.py"
        )
    impls = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        sys.exit(f"unknown --impls {unknown}; choose from {IMPLS}")
    for impl in impls:
        if impl != "torchvision" and impl not in dk.available_backends("cuda", "deform_conv2d"):
            reason = dk._backend.unavailable_reason(impl, "cuda", "deform_conv2d")
            sys.exit(f"backend {impl!r} cannot run on CUDA here: {reason}")
    copy_bw = copy_bandwidth()
    rows = []
    for label, (n, c, h, w, groups), backward, opts in QUICK if args.quick else CASES:
        dtype = opts.get("dtype", torch.float32)
        case_impls = [i for i in impls if i != "torchvision" or dtype != torch.bfloat16]
        thunks = {
            impl: make(impl, n, c, h, w, groups, backward, device="cuda", **opts)
            for impl in case_impls
        }
        times = H.time_interleaved(thunks, reps=args.reps, warmup=3, device="cuda")
        elem = dtype.itemsize
        moved = essential_bytes(n, c, h, w, backward, elem)
        own = output_and_grad_bytes(n, c, h, w, groups, backward) * elem // 4
        for impl in case_impls:
            peak = H.peak_cuda_memory(thunks[impl])
            bw = moved / times[impl]
            speedup = f"{times['torchvision'] / times[impl]:.1f}x" if "torchvision" in times else ""
            row = [
                label,
                impl,
                H.fmt_time(times[impl]),
                speedup,
                H.fmt_bytes(peak),
                H.fmt_bytes(max(0, peak - own)),
                f"{bw / 1e9:.0f} GB/s",
                f"{100 * bw / copy_bw:.0f}%",
            ]
            rows.append(row)
            print(" | ".join(row), flush=True)
        del thunks
        torch.cuda.empty_cache()
    print()
    print(H.machine_line())
    print(f"device copy bandwidth (1 GiB copy_): {copy_bw / 1e9:.0f} GB/s")
    print(
        H.markdown_table(
            [
                "case",
                "impl",
                "time",
                "vs torchvision",
                "peak CUDA mem",
                "beyond out+grads",
                "achieved bandwidth",
                "of copy bandwidth",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

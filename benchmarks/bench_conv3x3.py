"""Benchmark: 3x3 convolution forward (stride 1, padding 1) on the CPU, time per call.

Implementations (the same convolution, channels-last float32 input, the model's layout):
  reference  ``F.conv2d`` (oneDNN's direct convolution; channels-last is its fastest layout here);
  cpp        ``dzsr_kernels.conv3x3``: Winograd F(4x4, 3x3) (csrc/conv3x3/conv3x3_cpu.cpp).
Epilogue rows (the restoration body's two convolutions of a residual block): ``+ relu`` and
``+ residual`` time ``F.conv2d`` followed by torch's in-place ``relu_`` / ``add_`` against
``conv3x3(..., negative_slope=0.0)`` / ``conv3x3(..., residual=r)``, which apply them in the kernel.
Shapes: SelfDZSR's at LR 687x1111: a body window of the default tiled inference (64 -> 64 on a
834x622 LR window), the matching trunk's band convolutions (conv1_2, conv2_1, conv2_2 on 136 rows of
the 1112-pixel-wide query), and small channel counts (where the transforms cost more than they save:
``cpp_kernel.min_in_channels``). Time: interleaved median after a warm-up (benchmarks/_harness.py).

    python -m benchmarks.bench_conv3x3 [--quick] [--reps 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks import _harness

# (N, C, C', H, W)
CASES = [
    (1, 64, 64, 834, 622),
    (1, 64, 64, 136, 1112),
    (1, 64, 128, 136, 1112),
    (1, 128, 128, 136, 1112),
    (1, 8, 64, 512, 512),
    (1, 6, 64, 512, 512),
    (1, 64, 3, 512, 512),
]
QUICK_CASES = [(1, 16, 16, 24, 20), (2, 33, 40, 13, 11)]
EPILOGUES = ("relu", "residual")  # timed on the first case (the body window)
IMPLS = ("reference", "cpp")


def make_case(shape, impl, epilogue=None):
    """A thunk running one forward of ``impl`` on random channels-last float32 input, followed by
    ``epilogue`` (None, "relu" or "residual"; module docstring)."""
    import dzsr_kernels as dk
    from dzsr_kernels.conv3x3 import cpp_kernel

    n, c, c_out, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c, 3, 3, generator=gen) / (9 * c) ** 0.5
    bias = torch.randn(c_out, generator=gen)
    residual = (
        torch.randn(n, c_out, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
        if epilogue == "residual"
        else None
    )
    slope = 0.0 if epilogue == "relu" else None
    if impl == "reference":

        def run_reference():
            y = F.conv2d(x, weight, bias, padding=1)
            return y.add_(residual) if residual is not None else y.relu_() if slope == 0 else y

        return run_reference
    if c < cpp_kernel.min_in_channels(x.dtype):
        from dzsr_kernels.conv3x3 import op  # below the threshold the public op runs conv2d

        return lambda: op._conv3x3(x, weight, bias, residual, slope, impl)
    with dk.use_backend(impl):
        dk.conv3x3(x, weight, bias)  # builds and loads the extension outside the timing

    def run():
        with dk.use_backend(impl):
            return dk.conv3x3(x, weight, bias, residual=residual, negative_slope=slope)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(_harness.machine_line())
    print(f"3x3 convolution forward, float32, channels-last input, median of {args.reps}\n")
    rows = []
    shapes = QUICK_CASES if args.quick else CASES
    for shape, epilogue in [(s, None) for s in shapes] + [(shapes[0], e) for e in EPILOGUES]:
        thunks = {impl: make_case(shape, impl, epilogue) for impl in IMPLS}
        times = _harness.time_interleaved(thunks, reps=args.reps)
        n, c, c_out, h, w = shape
        gflop = 2 * n * c * c_out * 9 * h * w / 1e9
        for impl in IMPLS:
            rows.append(
                [
                    str(shape) + (f" + {epilogue}" if epilogue else ""),
                    impl,
                    _harness.fmt_time(times[impl]),
                    f"{gflop / times[impl]:.0f}",
                    f"{times['reference'] / times[impl]:.2f}x",
                ]
            )
    header = ["shape (N,C,C',H,W)", "impl", "time", "direct-conv GFLOP/s", "speed-up vs reference"]
    print(_harness.markdown_table(header, rows))


if __name__ == "__main__":
    main()

"""Benchmark: local sliced-Wasserstein (LOSW) loss forward+backward, time and peak memory.

Implementations (the same loss, C//2 fresh directions per call, windows at stride 2):
  reference  the authors' formulation (SelfDZSR++ models/losses.py, rewritten in
             dzsr_kernels/local_sliced_wasserstein/reference.py): F.unfold of every window,
             batched matmul, torch.sort of the (N, P, C', k*k) rows, autograd;
  cpp        the fused kernels (each pixel projected once, per-window sorts, int32 per-pixel sign
             sums; C++ on the CPU, the CUDA kernel on a GPU) and the GEMM backward.
Shapes: VGG-19 relu3_2, relu4_2, relu5_2 of a batch of 16 192-pixel HR patches with the authors'
per-layer windows 8, 4, 2. Time: interleaved median after a warm-up (benchmarks/_harness.py). Peak
memory: CPU child-process RSS above a child that builds the same inputs; CUDA max_memory_allocated.

    python -m benchmarks.bench_local_sliced_wasserstein [--quick] [--reps 5] [--case N,C,H,W,k]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import _harness

CASES = [((16, 256, 48, 48), 8), ((16, 512, 24, 24), 4), ((16, 512, 12, 12), 2)]
QUICK_CASES = [((2, 64, 24, 24), 4), ((2, 64, 12, 12), 2)]
IMPLS = ("reference", "cpp")
CASE = "benchmarks.bench_local_sliced_wasserstein:make_case"


def make_case(shape, window, impl, device="cpu"):
    """Inputs (u requires grad, v is the target) and a thunk running one forward+backward."""
    import dzsr_kernels as dk

    gen = torch.Generator(device=device).manual_seed(0)
    u = torch.randn(shape, device=device, generator=gen).requires_grad_()
    v = torch.randn(shape, device=device, generator=gen)
    if impl == "cpp":
        from dzsr_kernels import _backend

        reason = _backend.unavailable_reason(
            impl, torch.device(device).type, "local_sliced_wasserstein"
        )
        if reason is not None:  # also loads the extension, outside the measured op
            raise RuntimeError(reason)

    def run():
        u.grad = None
        with dk.use_backend(impl):
            loss = dk.local_sliced_wasserstein_loss(u, v, window)
        loss.backward()

    return run


def _parse_case(text: str):
    n, c, h, w, k = (int(x) for x in text.split(","))
    return (n, c, h, w), k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument(
        "--case",
        action="append",
        default=None,
        metavar="N,C,H,W,k",
        help="run only this shape and window (repeatable)",
    )
    args = parser.parse_args()
    print(_harness.machine_line())
    print(
        f"forward+backward of the LOSW loss, C' = C//2, stride 2, device {args.device}, "
        f"median of {args.reps}\n"
    )
    cases = [_parse_case(t) for t in args.case] if args.case else CASES
    cases = QUICK_CASES if args.quick else cases
    kwargs = {
        (shape, k, impl): {"shape": shape, "window": k, "impl": impl, "device": args.device}
        for shape, k in cases
        for impl in IMPLS
    }
    # CPU memory first, while this process is small (see bench_sliced_wasserstein.py).
    mems = {}
    if not args.no_memory and not args.device.startswith("cuda"):
        mems = {key: _harness.peak_cpu_memory(CASE, kw) for key, kw in kwargs.items()}
    rows = []
    for shape, k in cases:
        thunks = {impl: make_case(**kwargs[shape, k, impl]) for impl in IMPLS}
        times = _harness.time_interleaved(thunks, reps=args.reps, device=args.device)
        if not args.no_memory and args.device.startswith("cuda"):
            mems.update({(shape, k, i): _harness.peak_cuda_memory(thunks[i]) for i in IMPLS})
        del thunks
        for impl in IMPLS:
            mem = "-"
            if mems:
                ratio = mems[shape, k, impl] / max(mems[shape, k, "reference"], 1)
                mem = f"{_harness.fmt_bytes(mems[shape, k, impl])} ({ratio:.2f}x)"
            speed_up = times["reference"] / times[impl]
            rows.append(
                [str(shape), str(k), impl, _harness.fmt_time(times[impl]), f"{speed_up:.2f}x", mem]
            )
    header = ["shape (N,C,H,W)", "k", "impl", "fwd+bwd", "speed-up vs reference", "peak memory"]
    print(_harness.markdown_table(header, rows))


if __name__ == "__main__":
    main()

"""Before/after timing of the ``cpp`` CPU kernels at BENCHMARKS.md's shapes, using only the public
API, so the same file times any checkout:

    PYTHONPATH=/path/to/checkout DZSR_CACHE_DIR=/tmp/cache_x python benchmarks/bench_kernel_rows.py [--reps 5]

Prints one ``label<TAB>median ms`` line per row. Alternate two checkouts (A B A B ...) and compare
the medians row by row; no baseline runs here (the per-op benchmarks hold those).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dzsr_kernels as dk


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def deform_case(shape, groups: int, backward: bool, channels_last: bool = False):
    n, c, h, w = shape
    x = torch.randn(n, c, h, w)
    if channels_last:  # the layout whole-image inference hands the op (dzsr/infer.py)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)
    A = (torch.randn(n, 4, h, w) * 0.3).requires_grad_(backward)
    b = torch.randn(n, 2, h, w).requires_grad_(backward)
    weight = torch.randn(c, c // groups, 3, 3, requires_grad=backward)

    def run():
        y = dk.affine_deform_conv2d(x, A, b, weight, groups=groups)
        if backward:
            y.sum().backward()

    return run


def sw_case(shape):
    u, v = torch.randn(*shape, requires_grad=True), torch.randn(*shape)
    gen = torch.Generator().manual_seed(1)
    return lambda: dk.sliced_wasserstein_loss(u, v, generator=gen).backward()


def patch_match_case(size: int):
    q, r = torch.randn(1, 256, size, size), torch.randn(1, 256, size, size)
    return lambda: dk.patch_match(q, r, 3)


ROWS = [
    ("deform conv (16,64,48,48) depthwise fwd", lambda: deform_case((16, 64, 48, 48), 64, False)),
    (
        "deform conv (16,64,48,48) depthwise fwd+bwd",
        lambda: deform_case((16, 64, 48, 48), 64, True),
    ),
    ("deform conv (16,64,48,48) dense fwd", lambda: deform_case((16, 64, 48, 48), 1, False)),
    ("deform conv (16,64,48,48) dense fwd+bwd", lambda: deform_case((16, 64, 48, 48), 1, True)),
    ("deform conv (1,64,512,512) depthwise fwd", lambda: deform_case((1, 64, 512, 512), 64, False)),
    (
        "deform conv (1,64,512,512) depthwise fwd+bwd",
        lambda: deform_case((1, 64, 512, 512), 64, True),
    ),
    (
        "deform conv (1,64,512,512) depthwise fwd, channels-last x",
        lambda: deform_case((1, 64, 512, 512), 64, False, channels_last=True),
    ),
    *(
        (f"SW {s} fwd+bwd", (lambda s=s: sw_case(s)))
        for s in [(16, 256, 48, 48), (16, 512, 24, 24), (16, 512, 12, 12), (1, 256, 256, 256)]
    ),
    *((f"patch_match {n}x{n}x256", (lambda n=n: patch_match_case(n))) for n in (64, 128)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="", help="run only rows whose label contains this text")
    args = parser.parse_args()
    torch.manual_seed(0)
    with dk.use_backend("cpp"):
        for label, make in ROWS:
            if args.only in label:
                print(f"{label}\t{median_ms(make(), args.reps):.1f}", flush=True)


if __name__ == "__main__":
    main()

"""Deformable convolution on the CPU: dzsr backends vs torchvision.ops.deform_conv2d.

torchvision is fed the offsets users build from A, b (dy, dx) = A g + b - g, as the authors do; that
construction is part of its timed call. Times are medians of interleaved repetitions; peak memory
is the child-process RSS the op adds over building the inputs (benchmarks/_harness.py), and
"extra" subtracts the bytes of the output and of the gradients of x, A, b, weight.

    python -m benchmarks.bench_deform_conv [--quick] [--reps 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision

import dzsr_kernels as dk
from benchmarks import _harness as H
from dzsr_kernels.deform_conv.reference import tap_grid


def affine_offsets(A, b, k=3):
    g = tap_grid(k, A.device, A.dtype)
    gy, gx = g[:, 0].view(1, -1, 1, 1), g[:, 1].view(1, -1, 1, 1)
    dy = A[:, 0:1] * gy + A[:, 1:2] * gx + b[:, 0:1] - gy
    dx = A[:, 2:3] * gy + A[:, 3:4] * gx + b[:, 1:2] - gx
    return torch.stack([dy, dx], 2).flatten(1, 2)


def make(
    impl: str,
    n: int,
    c: int,
    h: int,
    w: int,
    groups: int,
    backward: bool,
    threads: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
):
    """Inputs for one case and a thunk running it once (impl: torchvision, cpp, triton, reference,
    p0, conv1x1); the thunk returns the output. dtype: of every tensor; channels_last: x and the
    output gradient stored channels-last (the CUDA channels-last depthwise kernels' layout)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    new = lambda *shape: torch.randn(*shape, device=device).to(dtype)  # noqa: E731
    x = new(n, c, h, w).contiguous(memory_format=fmt).requires_grad_(backward)
    A = torch.eye(2, device=device, dtype=dtype).reshape(1, 4, 1, 1) + 0.3 * new(n, 4, h, w)
    A.requires_grad_(backward)
    b = new(n, 2, h, w).requires_grad_(backward)
    weight = new(c, c // groups, 3, 3).requires_grad_(backward)
    grad = new(n, c, h, w).contiguous(memory_format=fmt)

    def run_op():
        if impl == "torchvision":
            return torchvision.ops.deform_conv2d(x, affine_offsets(A, b), weight, padding=1)
        if impl == "p0":
            return dk.centre_tap_conv2d(x, weight, None, groups)
        if impl == "conv1x1":
            return F.conv2d(x, weight[:, :, 1:2, 1:2], groups=groups)
        with dk.use_backend(impl):
            return dk.affine_deform_conv2d(x, A, b, weight, groups=groups)

    def thunk():
        out = run_op()
        if backward:
            out.backward(grad)
            for t in (x, A, b, weight):
                t.grad = None
        return out

    return thunk


def output_and_grad_bytes(n, c, h, w, groups, backward):
    out = n * c * h * w
    grads = (n * c * h * w + n * 6 * h * w + c * (c // groups) * 9) if backward else 0
    return 4 * (out + grads)


CASES = [  # label, (n, c, h, w, groups), backward, impls, memory
    ("(16,64,48,48) depthwise fwd", (16, 64, 48, 48, 64), False, ["cpp", "torchvision"], False),
    ("(16,64,48,48) depthwise fwd+bwd", (16, 64, 48, 48, 64), True, ["cpp", "torchvision"], True),
    ("(16,64,48,48) dense fwd", (16, 64, 48, 48, 1), False, ["cpp", "torchvision"], False),
    ("(16,64,48,48) dense fwd+bwd", (16, 64, 48, 48, 1), True, ["cpp", "torchvision"], True),
    ("(1,64,512,512) depthwise fwd", (1, 64, 512, 512, 64), False, ["cpp", "torchvision"], False),
    ("(1,64,512,512) depthwise fwd+bwd", (1, 64, 512, 512, 64), True, ["cpp", "torchvision"], True),
    (
        "(1,64,1024,1024) depthwise fwd",
        (1, 64, 1024, 1024, 64),
        False,
        ["cpp", "torchvision"],
        True,
    ),
    ("P=0 (16,64,48,48) fwd+bwd", (16, 64, 48, 48, 64), True, ["p0", "conv1x1"], False),
    ("P=0 (1,64,512,512) fwd+bwd", (1, 64, 512, 512, 64), True, ["p0", "conv1x1"], False),
]
QUICK = [  # small shapes for a smoke run
    ("(2,16,24,24) depthwise fwd+bwd", (2, 16, 24, 24, 16), True, ["cpp", "torchvision"], True),
    ("(2,16,24,24) dense fwd+bwd", (2, 16, 24, 24, 1), True, ["cpp", "torchvision"], False),
    ("P=0 (2,16,24,24) fwd+bwd", (2, 16, 24, 24, 16), True, ["p0", "conv1x1"], False),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    rows = []
    for label, (n, c, h, w, groups), backward, impls, memory in QUICK if args.quick else CASES:
        thunks = {impl: make(impl, n, c, h, w, groups, backward) for impl in impls}
        slow = n * c * h * w > 2**24
        times = H.time_interleaved(thunks, reps=3 if slow else args.reps, warmup=1)
        ours, base = impls
        row = [
            label,
            f"{ours} {H.fmt_time(times[ours])}",
            f"{base} {H.fmt_time(times[base])}",
            f"{times[base] / times[ours]:.1f}x",
        ]
        if memory and not args.no_memory:
            kw = dict(
                n=n,
                c=c,
                h=h,
                w=w,
                groups=groups,
                backward=backward,
                threads=torch.get_num_threads(),
            )
            mem = {
                impl: H.peak_cpu_memory("benchmarks.bench_deform_conv:make", {"impl": impl, **kw})
                for impl in impls
            }
            own = output_and_grad_bytes(n, c, h, w, groups, backward)
            extra = {k: max(0, v - own) for k, v in mem.items()}
            row += [
                f"{H.fmt_bytes(mem[ours])} / {H.fmt_bytes(mem[base])}",
                f"{H.fmt_bytes(extra[ours])} / {H.fmt_bytes(extra[base])} "
                f"({100 * extra[ours] / max(extra[base], 1):.1f}%)",
            ]
        else:
            row += ["", ""]
        rows.append(row)
        print(" | ".join(row), flush=True)
    print()
    print(H.machine_line())
    print(
        H.markdown_table(
            [
                "case",
                "ours",
                "baseline",
                "speed-up",
                "peak RSS added (ours / base)",
                "beyond out+grads (ours / base)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

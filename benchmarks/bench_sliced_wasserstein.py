"""Benchmark: sliced-Wasserstein loss forward+backward, time and peak memory per backend.

Implementations (all compute the same loss with fresh C//2 directions per call):
  reference  dzsr_kernels' PyTorch oracle (batched matmul, torch.sort, autograd);
  authors    the authors' style: numpy projections copied to the device, torch.sort with int64
             indices on both sides, L1 of the sorted rows, autograd keeping the whole graph;
  cpp        the fused C++ kernel (CPU) / CUDA forward + ATen backward (GPU);
  triton     GPU only.
Time: interleaved median after a warm-up (benchmarks/_harness.py). Peak memory: CPU child-process
RSS above a child that builds the same inputs; CUDA max_memory_allocated above the inputs.
``--breakdown`` (CUDA) times the stages instead, to place the time of the fast backends: the two
projection GEMMs, torch.sort of both projected rows (the reference's sort), and the custom ops'
forward (GEMMs included) and backward of ``cpp`` and ``triton``.

    python -m benchmarks.bench_sliced_wasserstein [--quick] [--device cuda] [--reps 5] [--shape N,C,H,W]
        [--breakdown]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import _harness

SHAPES = [(16, 256, 48, 48), (16, 512, 24, 24), (16, 512, 12, 12), (1, 256, 256, 256)]
QUICK_SHAPES = [(2, 64, 24, 24), (1, 64, 64, 64)]
CASE = "benchmarks.bench_sliced_wasserstein:make_case"


def authors_style_loss(fake: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """The authors' SWD (models/losses.py), rewritten: numpy draw, copy, sort both with indices."""
    n, c, h, w = true.shape
    proj = torch.from_numpy(np.random.normal(size=(c // 2, c)).astype(np.float32)).to(true.device)
    proj = F.normalize(proj, p=2, dim=1)
    sorted_true, _ = torch.sort(proj @ true.view(n, c, -1), dim=2)
    sorted_fake, _ = torch.sort(proj @ fake.view(n, c, -1), dim=2)
    return F.l1_loss(sorted_true, sorted_fake)


def make_case(shape, impl, device="cpu"):
    """Inputs (u requires grad, v is the target) and a thunk running one forward+backward."""
    import dzsr_kernels as dk

    gen = torch.Generator(device=device).manual_seed(0)
    u = torch.randn(shape, device=device, generator=gen).requires_grad_()
    v = torch.randn(shape, device=device, generator=gen)
    if impl in ("cpp", "triton"):
        from dzsr_kernels import _backend

        reason = _backend.unavailable_reason(impl, torch.device(device).type, "sliced_wasserstein")
        if reason is not None:  # also loads the extension, outside the measured op
            raise RuntimeError(reason)

    def run():
        u.grad = None
        if impl == "authors":
            loss = authors_style_loss(u, v)
        else:
            with dk.use_backend(impl):
                loss = dk.sliced_wasserstein_loss(u, v)
        loss.backward()

    return run


def stage_thunks(shape, device: str) -> dict:
    """Zero-argument callables of the stages of one SW forward+backward at ``shape``."""
    from dzsr_kernels import _backend
    from dzsr_kernels.sliced_wasserstein import op as sw_op
    from dzsr_kernels.sliced_wasserstein import reference

    n, c, h, w = shape
    gen = torch.Generator(device=device).manual_seed(0)
    u = torch.randn(n, c, h * w, device=device, generator=gen)
    v = torch.randn(n, c, h * w, device=device, generator=gen)
    proj = reference.draw_projections(c, c // 2, torch.Generator(device=device), device)
    pu, pv = proj @ u, proj @ v
    u4, v4 = u.view(shape), v.view(shape)
    thunks = {
        "projection GEMMs": lambda: (proj @ u, proj @ v),
        "torch.sort x2": lambda: (pu.sort(dim=2), pv.sort(dim=2)),
    }
    for backend in ("cpp", "triton") if device.startswith("cuda") else ("cpp",):
        reason = _backend.unavailable_reason(backend, torch.device(device).type, sw_op.OP)
        if reason is not None:  # also loads the extension
            raise RuntimeError(reason)
        _, sign, _ = sw_op._forward(u4, v4, proj, False, backend)
        thunks[f"{backend} forward"] = lambda b=backend: sw_op._forward(u4, v4, proj, False, b)
        thunks[f"{backend} backward"] = lambda b=backend, s=sign: sw_op._backward_op(s, proj, b)
    return thunks


def breakdown(shapes, reps: int, device: str) -> None:
    """Median time of each stage per shape, as one markdown table."""
    rows = []
    for shape in shapes:
        times = _harness.time_interleaved(stage_thunks(shape, device), reps=reps, device=device)
        rows += [[str(shape), name, _harness.fmt_time(t)] for name, t in times.items()]
    print(_harness.markdown_table(["shape (N,C,H,W)", "stage", "median"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--breakdown", action="store_true", help="time the stages instead")
    parser.add_argument(
        "--shape",
        action="append",
        default=None,
        metavar="N,C,H,W",
        help="run only this shape (repeatable)",
    )
    args = parser.parse_args()
    impls = ["reference", "authors", "cpp"] + (["triton"] if args.device.startswith("cuda") else [])
    print(_harness.machine_line())
    print(
        f"forward+backward of the SW loss, C' = C//2, device {args.device}, median of {args.reps}\n"
    )
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shape:
        shapes = [tuple(int(x) for x in text.split(",")) for text in args.shape]
    if args.breakdown:
        breakdown(shapes, args.reps, args.device)
        return
    kwargs = {
        (shape, name): {"shape": shape, "impl": name, "device": args.device}
        for shape in shapes
        for name in impls
    }
    # CPU memory first, while this process is small: a child's ru_maxrss starts from its parent's
    # high-water mark (Linux keeps it across fork/exec), which would hide the children's own peaks.
    mems = {}
    if not args.no_memory and not args.device.startswith("cuda"):
        mems = {key: _harness.peak_cpu_memory(CASE, kw) for key, kw in kwargs.items()}
    rows = []
    for shape in shapes:
        thunks = {name: make_case(**kwargs[shape, name]) for name in impls}
        times = _harness.time_interleaved(thunks, reps=args.reps, device=args.device)
        if not args.no_memory and args.device.startswith("cuda"):
            mems.update({(shape, name): _harness.peak_cuda_memory(thunks[name]) for name in impls})
        del thunks
        for name in impls:
            mem = "-"
            if mems:
                ratio = mems[shape, name] / max(mems[shape, "reference"], 1)
                mem = f"{_harness.fmt_bytes(mems[shape, name])} ({ratio:.2f}x)"
            rows.append(
                [
                    str(shape),
                    name,
                    _harness.fmt_time(times[name]),
                    f"{times['reference'] / times[name]:.2f}x",
                    mem,
                ]
            )
    print(
        _harness.markdown_table(
            [
                "shape (N,C,H,W)",
                "impl",
                "fwd+bwd",
                "speed-up vs reference",
                "peak memory (vs reference)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

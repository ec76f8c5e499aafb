"""Benchmark of top-1 patch matching (docs/design.md#patch-match, issue 3) against two baselines,
same process, interleaved.

Cases, per feature-map size HxW with C channels (query and reference of equal size, N=1):
  * ``cpp`` / ``triton``: ``dzsr_kernels.patch_match`` on that backend (streaming, O(Nq+Nr) memory);
  * ``conv2d``: chunked conv2d matching, C2-Matching style (the reference patches as conv filters,
    chunks of ``reference.CHUNK_ELEMENTS`` correlation values): the ``reference`` backend;
  * ``matmul``: a plain float32 matmul with the naive FLOP count 2·Nq·Nr·9C, as (Nq x 9C) @ (9C x B)
    over ceil(Nr/B) column blocks into one output buffer: the speed limit of the naive formulation.
"Equivalent GFLOP/s" is that naive count divided by the time. Peak memory: CPU, extra child-process
RSS over building the inputs (harness); CUDA, max_memory_allocated beyond the inputs.

    python -m benchmarks.bench_patch_match            # 64x64, 128x128, 172x278 at C=256
    python -m benchmarks.bench_patch_match --quick    # small sizes, seconds
    python -m benchmarks.bench_patch_match --device cuda --cases cpp,triton,conv2d,matmul
    python -m benchmarks.bench_patch_match --tf32-agreement [--device cuda]

``--tf32-agreement`` reports how often ``precision="tf32"`` returns the float32 index, and the largest
score difference, on random features and on smooth (spatially correlated, non-negative, VGG-like)
ones. On CUDA it runs the Triton kernel both ways; on CPU it emulates TF32 by rounding the normalised
pixels to 10 mantissa bits (what tensor cores do to the inputs) before the float32 reference.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import _harness

MATMUL_BLOCK = 2048


def naive_flops(h: int, w: int, c: int, p: int = 3) -> int:
    return 2 * ((h - p + 1) * (w - p + 1)) ** 2 * p * p * c


def _inputs(h, w, c, device):
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(1, c, h, w, generator=gen).to(device)
    ref = torch.randn(1, c, h, w, generator=gen).to(device)
    return query, ref


def op_case(backend: str, h: int, w: int, c: int, device: str = "cpu"):
    """A thunk running dzsr_kernels.patch_match on ``backend`` (conv2d baseline: 'reference')."""
    import dzsr_kernels

    query, ref = _inputs(h, w, c, device)

    def run():
        with dzsr_kernels.use_backend(backend):
            return dzsr_kernels.patch_match(query, ref)

    return run


def matmul_case(h: int, w: int, c: int, device: str = "cpu"):
    """A thunk doing the naive FLOP count as float32 matmuls, column block by column block."""
    nq = nr = (h - 2) * (w - 2)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(nq, 9 * c, generator=gen).to(device)
    b = torch.randn(9 * c, MATMUL_BLOCK, generator=gen).to(device)
    out = torch.empty(nq, MATMUL_BLOCK, device=device)
    blocks = [min(MATMUL_BLOCK, nr - s) for s in range(0, nr, MATMUL_BLOCK)]

    def run():
        for cols in blocks:
            torch.mm(a, b[:, :cols], out=out[:, :cols])
        return out

    return run


def _round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _feature_maps(kind: str, h: int, w: int, c: int, device: str, gen: torch.Generator):
    x = torch.randn(2, c, h, w, generator=gen)
    if kind == "smooth":
        x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2).relu()
    return x[:1].to(device), x[1:].to(device)


def tf32_agreement(h: int, w: int, c: int, device: str) -> list[list[str]]:
    from dzsr_kernels.patch_match import reference

    gen = torch.Generator().manual_seed(0)
    rows = []
    for kind in ("random", "smooth"):
        query, ref = _feature_maps(kind, h, w, c, device, gen)
        if device.startswith("cuda"):
            import dzsr_kernels

            with dzsr_kernels.use_backend("triton"):
                exact = dzsr_kernels.patch_match(query, ref)
                fast = dzsr_kernels.patch_match(query, ref, precision="tf32")
            how = "Triton tf32 vs float32"
        else:
            uq, ur, inv_q, inv_r = reference.prepare(query, ref, 3, torch.float32)
            exact = reference.match_prepared(uq, ur, inv_q, inv_r, 3)
            fast = reference.match_prepared(_round_to_tf32(uq), _round_to_tf32(ur), inv_q, inv_r, 3)
            how = "CPU emulation (inputs rounded to tf32)"
        agree = (exact[1] == fast[1]).double().mean().item()
        diff = (exact[0] - fast[0]).abs().max().item()
        rows.append([f"{h}x{w}x{c}", kind, how, f"{100 * agree:.2f}%", f"{diff:.1e}"])
    return rows


CASES = {
    "cpp": ("benchmarks.bench_patch_match:op_case", {"backend": "cpp"}),
    "triton": ("benchmarks.bench_patch_match:op_case", {"backend": "triton"}),
    "conv2d": ("benchmarks.bench_patch_match:op_case", {"backend": "reference"}),
    "matmul": ("benchmarks.bench_patch_match:matmul_case", {}),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (24x24, 40x40, 43x69, C=64)"
    )
    parser.add_argument(
        "--sizes", default="64x64,128x128,172x278", help="comma-separated HxW feature sizes"
    )
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument(
        "--cases", default="cpp,conv2d,matmul", help=f"comma-separated subset of {list(CASES)}"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument(
        "--tf32-agreement", action="store_true", help="measure the tf32 index agreement instead"
    )
    args = parser.parse_args(argv)
    sizes = "24x24,40x40,43x69" if args.quick else args.sizes
    channels = 64 if args.quick else args.channels
    if args.tf32_agreement:
        h, w = (int(s) for s in sizes.split(",")[0].split("x"))
        print(_harness.machine_line())
        print(
            _harness.markdown_table(
                ["map HxWxC", "features", "measured with", "index agreement", "max |score diff|"],
                tf32_agreement(h, w, channels, args.device),
            )
        )
        return
    cases = args.cases.split(",")
    print(_harness.machine_line())
    specs = {}
    for size in sizes.split(","):
        h, w = (int(s) for s in size.split("x"))
        specs[h, w] = {
            name: (
                CASES[name][0],
                {**CASES[name][1], "h": h, "w": w, "c": channels, "device": args.device},
            )
            for name in cases
        }
    # CPU memory first, while this process is small: a child's ru_maxrss starts from its parent's
    # high-water mark (Linux keeps it across fork/exec), which would hide the children's own peaks.
    cpu_memory = {}
    if not args.no_memory and not args.device.startswith("cuda"):
        cpu_memory = {
            (hw, name): _harness.peak_cpu_memory(*spec)
            for hw, group in specs.items()
            for name, spec in group.items()
        }
    rows = []
    for (h, w), spec in specs.items():
        thunks = {name: _harness.build(*spec[name]) for name in cases}
        times = _harness.time_interleaved(thunks, reps=args.reps, warmup=1, device=args.device)
        flops = naive_flops(h, w, channels)
        for name in cases:
            if args.no_memory:
                mem = "-"
            elif args.device.startswith("cuda"):
                mem = _harness.fmt_bytes(_harness.peak_cuda_memory(thunks[name]))
            else:
                mem = _harness.fmt_bytes(cpu_memory[(h, w), name])
            ratio = lambda base: f"{times[name] / times[base]:.2f}x" if base in times else "-"  # noqa: E731
            rows.append(
                [
                    f"{h}x{w}x{channels}",
                    name,
                    _harness.fmt_time(times[name]),
                    f"{flops / times[name] / 1e9:.0f}",
                    mem,
                    ratio("matmul"),
                    ratio("conv2d"),
                ]
            )
        del thunks
    print(
        f"naive FLOP count 2·Nq·Nr·9C; median of {args.reps} after 1 warm-up; time ratios (lower is faster)"
    )
    print(
        _harness.markdown_table(
            [
                "map HxWxC",
                "case",
                "time",
                "equiv GFLOP/s",
                "peak extra memory",
                "time / matmul",
                "time / conv2d",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

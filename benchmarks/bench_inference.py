"""Benchmark: whole-image x4 inference (``dzsr.infer.super_resolve``), the size of the authors'
real Nikon test image: LR 687x1111 (not a multiple of 4) -> SR 2748x4444, random weights and images,
the reference pasted over the central 1/4 box (as ``dzsr sr`` does).

Cases: ops backend ``cpp`` (fast) vs ``reference`` (pure-PyTorch oracles), each tiled with the
default tile (``dzsr.infer.DEFAULT_TILE``) and untiled, at each ``--precision``
(``super_resolve``'s: fp32, bf16, fp16 on CUDA only; default fp32). Two times per case:
  * warm: interleaved median (benchmarks/_harness.py) of ``--reps`` runs in this process, after a
    warm-up at a small size and ``--warmup`` untimed runs of every case at the full size (by
    default one: the process's heap then has the case's size and oneDNN has built the case's
    kernels for every tile shape; a first run also pays those, and the cases would otherwise pay
    them unequally, depending on which precision and tiling ran before);
  * first run: the one run of a fresh child process after the small warm-up, what ``dzsr sr``
    waits (the same child measures the peak memory: child-process RSS above a child that builds
    the same model and inputs, docs/design.md#measuring).
"fp32 / this": the case's speedup over the same backend and tiling at fp32 (warm times). The last
column is max |tiled - untiled| of the SR output per backend and precision.

    python -m benchmarks.bench_inference [--quick] [--reps 1] [--warmup 1] [--no-memory]
        [--backends cpp reference] [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import _harness as H

CASE = "benchmarks.bench_inference:make"
FULL = {"height": 687, "width": 1111}
QUICK = {"height": 29, "width": 37}
QUICK_TILE = 20  # 2x2 tiles


def build(height: int, width: int, scale: int = 4, device: str = "cpu"):
    """A random-weight eval model and inputs (lr, ref, paste_ref, paste_box) of one whole image, on
    ``device``."""
    from dzsr.models import SelfDZSR

    torch.manual_seed(0)
    model = SelfDZSR(scale).eval().to(device)
    gen = torch.Generator().manual_seed(1)
    lr, ref = (torch.rand(1, 3, height, width, generator=gen).to(device) for _ in range(2))
    bh, bw = height // scale, width // scale
    y0, x0 = (height - bh) // 2, (width - bw) // 2
    paste_ref = torch.rand(1, 3, scale * bh, scale * bw, generator=gen).to(device)
    box = torch.tensor([[y0, y0 + bh, x0, x0 + bw]])
    return model, (lr, ref, paste_ref, box)


def warm_up(model, backend: str, device: str = "cpu", precision: str = "fp32") -> None:
    """Load the backend's kernels (and build them) outside any measurement."""
    import dzsr_kernels
    from dzsr.infer import super_resolve

    with dzsr_kernels.use_backend(backend):
        small = torch.rand(1, 3, 16, 16, device=device)
        super_resolve(
            model,
            small,
            small,
            tile=None,
            predictor_lr=small,
            predictor_ref=small,
            precision=precision,
        )


def make(
    backend: str,
    tile: int | None,
    height: int,
    width: int,
    scale: int = 4,
    threads: int = 0,
    sink=None,
    device: str = "cpu",
    precision: str = "fp32",
):
    """Model, inputs (on ``device``) and a thunk running one whole-image SR (returns the output)."""
    import dzsr_kernels
    from dzsr.infer import super_resolve

    if threads:
        torch.set_num_threads(threads)
    model, inputs = build(height, width, scale, device)
    warm_up(model, backend, device, precision)

    def thunk():
        with dzsr_kernels.use_backend(backend):
            out = super_resolve(model, *inputs, tile=tile, precision=precision)
        if sink is not None:
            sink[(backend, tile, precision)] = out
        return out

    return thunk


def main():
    from dzsr.infer import DEFAULT_TILE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: LR {QUICK['height']}x{QUICK['width']}, tile {QUICK_TILE}, no memory children",
    )
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed full-size runs of every case before timing"
    )
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--backends", nargs="+", default=["cpp", "reference"])
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        type=H.cpu_precision,
        help="super_resolve precisions to time: fp32, bf16 (refused on a CPU without bfloat16 "
        "arithmetic); fp16 is CUDA only",
    )
    args = parser.parse_args()
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0 untimed runs, got {args.warmup}")
    size = QUICK if args.quick else FULL
    tile = QUICK_TILE if args.quick else args.tile
    outputs: dict = {}
    cases = {
        (b, t, p): make(b, t, **size, sink=outputs, precision=p)
        for b in args.backends
        for t in (tile, None)
        for p in args.precision
    }
    # children first: this process keeps its heap's high-water mark once it has run the cases
    # (dzsr.allocator never trims), and a child on top of that ran out of memory
    fresh = {k: ("", "") for k in cases}
    if not (args.no_memory or args.quick):
        for backend, t, precision in cases:
            kw = {
                "backend": backend,
                "tile": t,
                **size,
                "threads": torch.get_num_threads(),
                "precision": precision,
            }
            added, seconds = H.fresh_process_run(CASE, kw)
            fresh[(backend, t, precision)] = (H.fmt_time(seconds), H.fmt_bytes(added))
    times = H.time_interleaved(cases, reps=args.reps, warmup=1 if args.quick else args.warmup)
    rows = []
    for (backend, t, precision), seconds in times.items():
        diff = (
            (outputs[(backend, tile, precision)] - outputs[(backend, None, precision)])
            .abs()
            .max()
            .item()
        )
        fp32 = times.get((backend, t, "fp32"))
        rows.append(
            [
                backend,
                f"tile {t}" if t else "untiled",
                precision,
                H.fmt_time(seconds),
                f"{fp32 / seconds:.2f}x" if fp32 else "-",
                *fresh[(backend, t, precision)],
                f"{diff:.1e}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    base = times.get(("reference", None, "fp32"))
    if base:
        for row, seconds in zip(rows, times.values()):
            row.insert(5, f"{base / seconds:.2f}x")
    print()
    print(H.machine_line())
    print(
        f"x4 whole-image inference, LR {size['height']}x{size['width']} -> SR {4 * size['height']}x{4 * size['width']}"
    )
    header = (
        ["ops", "tiling", "precision", "time (warm)", "fp32 / this"]
        + (["vs reference untiled fp32"] if base else [])
        + ["first run (fresh process)", "peak RSS added", "max |tiled - untiled|"]
    )
    print(H.markdown_table(header, rows))


if __name__ == "__main__":
    main()

"""Benchmark of top-1 patch matching (docs/design.md#patch-match, issue 3) against two baselines,
same process, interleaved.

Cases, per feature-map size HxW with C channels (query and reference of equal size, N=1):
  * ``cpp`` / ``triton``: ``dzsr_kernels.patch_match`` on that backend, ``precision="exact"``
    (streaming, O(Nq+Nr) memory); ``triton_fast``: the Triton backend with ``precision="fast"``
    (split-TF32 tensor cores);
  * ``conv2d``: chunked conv2d matching, C2-Matching style (the reference patches as conv filters,
    chunks of ``reference.CHUNK_ELEMENTS`` correlation values): the ``reference`` backend;
  * ``matmul``: a plain float32 matmul with the naive FLOP count 2·Nq·Nr·9C, as (Nq x 9C) @ (9C x B)
    over ceil(Nr/B) column blocks into one output buffer: the speed limit of the naive formulation.
"Equivalent GFLOP/s" is that naive count divided by the time. Peak memory: CPU, extra child-process
RSS over building the inputs (harness); CUDA, max_memory_allocated beyond the inputs.

    python -m benchmarks.bench_patch_match            # 64x64, 128x128, 172x278 at C=256
    python -m benchmarks.bench_patch_match --quick    # small sizes, seconds
    python -m benchmarks.bench_patch_match --device cuda --cases conv2d,cpp,triton,triton_fast
    python -m benchmarks.bench_patch_match --agreement [--device cuda]

``--agreement`` reports how often ``precision="fast"`` returns the exact (float32) index, and the
largest score difference (against the proven bound, ``precision.fast_score_error_bound``), on real
features (the demo checkpoint's extractor on each bundled sample, ``bundled_feature_pairs``), on
random ones and on smooth (spatially correlated, non-negative) ones. On CUDA it runs the Triton
kernel both ways; on CPU it applies the fast contract's operand rounding in torch before the
float32 reference computation (split TF32: hi·hi + hi·lo + lo·hi as one dot over 3C channels), and
for comparison the roundings of one TF32 product and of bfloat16 operands.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import _harness
from dzsr.models.blocks import rows_times_filters
from dzsr_kernels.patch_match import reference
from dzsr_kernels.patch_match.precision import fast_score_error_bound, round_to_tf32_, split_tf32

MATMUL_BLOCK = 2048


def naive_flops(h: int, w: int, c: int, p: int = 3) -> int:
    return 2 * ((h - p + 1) * (w - p + 1)) ** 2 * p * p * c


def _inputs(h, w, c, device):
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(1, c, h, w, generator=gen).to(device)
    ref = torch.randn(1, c, h, w, generator=gen).to(device)
    return query, ref


def op_case(backend: str, h: int, w: int, c: int, device: str = "cpu", precision: str = "exact"):
    """A thunk running dzsr_kernels.patch_match on ``backend`` (conv2d baseline: 'reference')."""
    import dzsr_kernels

    query, ref = _inputs(h, w, c, device)

    def run():
        with dzsr_kernels.use_backend(backend):
            return dzsr_kernels.patch_match(query, ref, precision=precision)

    return run


def matmul_case(h: int, w: int, c: int, device: str = "cpu"):
    """A thunk doing the naive FLOP count as float32 products, column block by column block: on
    CUDA ``torch.mm`` (cuBLAS), on the CPU ``dzsr.models.blocks.rows_times_filters`` (oneDNN; MKL's
    sgemm, ``torch.mm``'s, runs at about half its rate on AMD CPUs: the baseline gets the faster
    library)."""
    nq = nr = (h - 2) * (w - 2)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(nq, 9 * c, generator=gen).to(device)
    b = torch.randn(9 * c, MATMUL_BLOCK, generator=gen).to(device)
    blocks = [min(MATMUL_BLOCK, nr - s) for s in range(0, nr, MATMUL_BLOCK)]
    if device == "cpu":
        filters = b.t().contiguous()

        def run():
            for cols in blocks:
                out = rows_times_filters(a, filters[:cols])
            return out

        return run
    out = torch.empty(nq, MATMUL_BLOCK, device=device)

    def run():
        for cols in blocks:
            torch.mm(a, b[:, :cols], out=out[:, :cols])
        return out

    return run


def _split_tf32_maps(uq: torch.Tensor, ur: torch.Tensor):
    """Maps (N,H,W,3C) whose channel dot products are the fast contract's split-TF32 products:
    [hi_q, hi_q, lo_q] . [hi_r, lo_r, hi_r] = hi·hi + hi·lo + lo·hi."""
    (hq, lq), (hr, lr) = split_tf32(uq), split_tf32(ur)
    return torch.cat([hq, hq, lq], 3), torch.cat([hr, lr, hr], 3)


# Operand roundings emulated on CPU, (uq, ur) -> maps for the float32 reference computation: the
# fast contract's split TF32, and for comparison one TF32 product and bfloat16 operands.
ROUNDINGS = {
    "split tf32": _split_tf32_maps,
    "tf32": lambda uq, ur: (round_to_tf32_(uq.clone()), round_to_tf32_(ur.clone())),
    "bf16": lambda uq, ur: (uq.to(torch.bfloat16).float(), ur.to(torch.bfloat16).float()),
}


def bundled_feature_pairs(scale: int = 4) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(sample name, query features, reference features), each (1,256,h,w) float32 on the CPU, for
    every bundled sample: the shipped demo checkpoint's extractor on the whole short-focus image and
    its matching reference (``prepare_inputs``), padded as ``dzsr sr`` pads them."""
    from dzsr.checkpoint import load_model
    from dzsr.data.inputs import prepare_inputs
    from dzsr.models.selfdzsr import pad_to_feature_stride
    from dzsr.sample import SAMPLE_NAMES, load_sample

    model = load_model()
    pairs = []
    for name in SAMPLE_NAMES:
        sample = load_sample(name, scale)
        x = prepare_inputs(sample["short"], sample["tele"], scale)
        features = model.extractor(pad_to_feature_stride(x["lr"]), pad_to_feature_stride(x["ref"]))
        pairs.append((name, *features))
    return pairs


def emulated_fast(query: torch.Tensor, ref: torch.Tensor, rounding: str = "split tf32", p: int = 3):
    """((score, index) exact, (score, index) fast) on the CPU: the reference's float32
    computation on the prepared maps, then on the maps ``ROUNDINGS[rounding]`` makes of them (the
    fast contract for "split tf32": TF32 products exact, float32 sums, float32 norms)."""
    uq, ur, inv_q, inv_r = reference.prepare(query.cpu(), ref.cpu(), p, torch.float32)
    fast_maps = ROUNDINGS[rounding](uq, ur)
    exact = reference.match_prepared(uq, ur, inv_q.clone(), inv_r.clone(), p)
    return exact, reference.match_prepared(*fast_maps, inv_q, inv_r, p)


def kernel_fast(query: torch.Tensor, ref: torch.Tensor, p: int = 3):
    """((score, index) exact, (score, index) fast) of the Triton backend on ``query``'s device."""
    import dzsr_kernels

    with dzsr_kernels.use_backend("triton"):
        exact = dzsr_kernels.patch_match(query, ref, p)
        return exact, dzsr_kernels.patch_match(query, ref, p, precision="fast")


def agreement(pairs) -> tuple[float, float, int]:
    """(share of equal indices, max |score difference|, number of query patches) over
    ``pairs`` of (exact, fast) results."""
    same = sum(int((e[1] == f[1]).sum()) for e, f in pairs)
    total = sum(e[1].numel() for e, _ in pairs)
    diff = max(float((e[0] - f[0]).abs().max()) for e, f in pairs)
    return same / total, diff, total


def _feature_maps(kind: str, h: int, w: int, c: int, gen: torch.Generator):
    x = torch.randn(2, c, h, w, generator=gen)
    if kind == "smooth":
        x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2).relu()
    return x[:1], x[1:]


def agreement_rows(h: int, w: int, c: int, device: str) -> list[list[str]]:
    """The ``--agreement`` table: per feature set and measurement, the index agreement with the
    exact result, the max score difference and the proven bound."""
    gen = torch.Generator().manual_seed(0)
    sets = [(f"real: {name}", q, r) for name, q, r in bundled_feature_pairs()]
    sets += [
        (f"{kind} {h}x{w}", *_feature_maps(kind, h, w, c, gen)) for kind in ("random", "smooth")
    ]
    if device.startswith("cuda"):
        ways = {"Triton fast vs exact (GPU)": lambda q, r: kernel_fast(q.to(device), r.to(device))}
    else:
        ways = {
            f"CPU emulation, {name} operands": lambda q, r, name=name: emulated_fast(q, r, name)
            for name in ROUNDINGS
        }
    rows = []
    for how, compute in ways.items():
        bounded = "split" in how or "GPU" in how  # the bound is the fast contract's
        real = []
        for label, query, ref in sets:
            result = compute(query, ref)
            if label.startswith("real"):
                real.append(result)
            rows.append(_agreement_row(label, how, [result], query.shape[1] if bounded else 0))
        real_channels = sets[0][1].shape[1] if bounded else 0
        rows.append(_agreement_row("real: all samples", how, real, real_channels))
    return rows


def _agreement_row(label: str, how: str, pairs, channels: int) -> list[str]:
    """One table row; the proven bound for ``channels`` (0: none applies)."""
    share, diff, total = agreement(pairs)
    bound = f"{fast_score_error_bound(channels, 3):.1e}" if channels else "-"
    return [label, f"{total}", how, f"{100 * share:.3f}%", f"{diff:.1e}", bound]


CASES = {
    "cpp": ("benchmarks.bench_patch_match:op_case", {"backend": "cpp"}),
    "triton": ("benchmarks.bench_patch_match:op_case", {"backend": "triton"}),
    "triton_fast": (
        "benchmarks.bench_patch_match:op_case",
        {"backend": "triton", "precision": "fast"},
    ),
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
        "--agreement",
        action="store_true",
        help="measure the fast precision's index agreement and score error instead",
    )
    args = parser.parse_args(argv)
    sizes = "24x24,40x40,43x69" if args.quick else args.sizes
    channels = 64 if args.quick else args.channels
    if args.agreement:
        h, w = (int(s) for s in sizes.split(",")[0].split("x"))
        print(_harness.machine_line())
        header = ["features", "query patches", "measured with", "index agreement"]
        header += ["max |score diff|", "proven bound"]
        print(_harness.markdown_table(header, agreement_rows(h, w, channels, args.device)))
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

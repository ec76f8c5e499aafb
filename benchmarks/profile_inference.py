"""Where whole-image inference spends its time, stage by stage, against each stage's floor.

    python -m benchmarks.profile_inference [--height 687 --width 1111] [--tile 384] [--backend cpp]
                                           [--precision fp32|bf16]

One ``dzsr.infer.super_resolve`` run (x4, random weights and images, reference pasted over the
central quarter, as ``benchmarks/bench_inference.py``) under the torch profiler, after a warm-up run
at a small size and one untimed run at the full size (the process's heap grows to its size there: a
first run also pays the kernel's page faults, seconds on a fresh virtual machine). Each public stage
of the model that ``super_resolve`` calls (``SelfDZSR.match``, ``ReferenceBranch.encode`` /
``warp_encoded`` / ``paste_reference``, the reference AdaSTN's ``estimate`` / ``transform``,
``RestorationNet.lr_features`` / ``align_lr`` / ``fuse`` / ``predictor`` (its ``resized_inputs``,
``embed`` tiles and ``reduce``) / ``body`` / ``upsample``)
and, inside ``match``, the extractor and the patch matching op, is wrapped in a ``record_function``
range by this script (instance attributes and module hooks: the library is not changed); the tiled
stages' ranges are summed over their tiles.

Columns, per stage:
  * profiler time: wall time of its ranges under the profiler (inclusive): the profiler slows
    some stages down severalfold (the restoration body 14.4 s against 5.3 s measured by timers on
    the CPU machine), so it serves for the counts below, not for time;
  * time: the stage's wall time in a second run of the same call without the profiler
    (``time.perf_counter`` around each call of the stage, summed), and its share of that run;
  * GFLOP: convolutions and matmuls as the profiler counts them (2 x multiply-adds), plus the dzsr
    ops: deformable convolution 2·N·Cout·(C/groups)·k²·H·W multiply-adds + 7 flops per bilinear
    sample (N·C·k²·H·W samples); the Winograd 3x3 convolution the products it computes,
    2·N·Cout·C·36 per 4x4 output tile (a quarter of direct convolution's; its transforms are not
    counted); patch matching 2·N·C·Hq·Wq·Hr·Wr (one dot product per pixel pair,
    the shift-decomposed count the kernels compute);
  * FLOP floor: GFLOP / this machine's matmul rate in the stage's dtype (measured in the same run,
    the faster of ``torch.mm`` and oneDNN's 1x1 convolution, ``matmul_rate``):
    with ``--precision bf16`` the bfloat16 rate for the stages ``super_resolve`` lowers, the float32
    rate for those it keeps in float32 (``match``, the reference warp ``warp_encoded`` and the AdaSTN
    ``transform``:
    docs/design.md#precision);
  * MB: the bytes of the inputs of the stage's own operations (each read once: a lower bound on its
    memory traffic); byte floor: MB / this machine's copy bandwidth (``dst.copy_(src)`` of 256 MiB,
    counting 512 MiB moved);
  * x floor: time (the timers') / max(FLOP floor, byte floor).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks import _harness as H
from benchmarks.bench_inference import build, warm_up
from dzsr.models.blocks import rows_times_filters

PREFIX = "stage: "
BYTES = {torch.float32: 4, torch.float64: 8, torch.bfloat16: 2, torch.float16: 2, torch.int64: 8}


# stages super_resolve keeps in float32 whatever the precision (dzsr/infer.py)
FLOAT32_STAGES = {"match", "match / extractor", "match / patch_match", "warp_encoded", "transform"}


def matmul_rate(n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n x n product in ``dtype`` at the current thread count (median): the faster
    of ``torch.mm`` and ``dzsr.models.blocks.rows_times_filters``, i.e. of PyTorch's two CPU GEMM
    libraries (MKL's float32 sgemm takes its AVX2 path on AMD CPUs, at half the rate of oneDNN,
    which runs the model's convolutions)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = H.time_interleaved(
        {"mm": lambda: a @ b, "onednn": lambda: rows_times_filters(a, b)}, reps=reps
    )
    return 2 * n**3 / min(seconds.values())


def copy_bandwidth(mib: int = 256, reps: int = 5) -> float:
    """Bytes/s of ``dst.copy_(src)`` on ``mib`` MiB (read + write counted)."""
    src = torch.randn(mib * 2**18)
    dst = torch.empty_like(src)
    seconds = H.time_interleaved({"copy": lambda: dst.copy_(src)}, reps=reps)["copy"]
    return 2 * src.numel() * 4 / seconds


TIMERS: dict[str, float] = defaultdict(float)  # stage -> seconds, summed over its calls


def labelled(name: str, fn):
    """``fn`` inside a profiler range ``stage: name``, its wall time added to ``TIMERS[name]``."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        with record_function(PREFIX + name):
            out = fn(*args, **kwargs)
        TIMERS[name] += time.perf_counter() - start
        return out

    return wrapper


def label_module(name: str, module: torch.nn.Module) -> None:
    """As ``labelled`` for a module's forward (hooks: the module stays a child of its owner)."""
    ranges = []

    def enter(m, a):
        ranges.append((time.perf_counter(), record_function(PREFIX + name).__enter__()))

    def leave(m, a, out):
        start, scope = ranges.pop()
        scope.__exit__(None, None, None)
        TIMERS[name] += time.perf_counter() - start

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


def instrument(model) -> None:
    """Label the public stages super_resolve calls (shadowing bound methods on the instances), and
    time the patch matching op (the profiler reports it under its own name)."""
    import dzsr_kernels

    net, branch = model.restoration, model.restoration.reference
    owners = {
        model: ["match"],
        branch: ["encode", "warp_encoded", "paste_reference"],
        branch.align: ["estimate", "transform"],
        net: ["lr_features", "align_lr", "fuse", "body", "upsample"],
    }
    for owner, names in owners.items():
        for name in names:
            setattr(owner, name, labelled(name, getattr(owner, name)))
    for name in ("resized_inputs", "embed", "reduce"):  # one "predictor" row for its stages
        setattr(net.predictor, name, labelled("predictor", getattr(net.predictor, name)))
    label_module("match / extractor", model.extractor)
    patch_match = dzsr_kernels.patch_match

    def timed_patch_match(*args, **kwargs):
        start = time.perf_counter()
        out = patch_match(*args, **kwargs)
        TIMERS["match / patch_match"] += time.perf_counter() - start
        return out

    dzsr_kernels.patch_match = timed_patch_match


def op_flops(event) -> float:
    if event.flops:
        return float(event.flops)
    shapes = event.input_shapes
    if event.name == "dzsr::deform_conv2d_packed":
        (n, c, h, w), (cout, cg, k, _) = shapes[0], shapes[3]
        return 2.0 * n * cout * cg * k * k * h * w + 7.0 * n * c * k * k * h * w
    if event.name == "dzsr::conv3x3":  # Winograd F(4x4, 3x3): 36 products per tile, not 144
        (n, c, h, w), (cout, _, _, _) = shapes[0], shapes[1]
        return 2.0 * n * cout * c * 36 * -(-h // 4) * -(-w // 4)
    if event.name == "dzsr::patch_match":
        (n, c, hq, wq), (_, _, hr, wr) = shapes[0], shapes[1]
        return 2.0 * n * c * hq * wq * hr * wr
    return 0.0


def input_bytes(event) -> float:
    total = 0.0
    for shape, dtype in zip(event.input_shapes, event.input_dtypes or []):
        if shape and dtype:
            size = BYTES.get(getattr(torch, str(dtype).replace("c10::", "").lower(), None), 4)
            total += size * float(torch.Size(shape).numel())
    return total


def stage_of(event) -> str | None:
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith(PREFIX):
        parent = parent.cpu_parent
    return parent.name[len(PREFIX) :] if parent is not None else None


def is_nested_dzsr_op(event) -> bool:
    """A call inside a dzsr op (its implementation's own events): counted with the op."""
    return event.cpu_parent is not None and event.cpu_parent.name.startswith("dzsr::")


def is_inside_counted_call(event) -> bool:
    """A call inside one that the profiler already estimated (autocast re-dispatches ``aten::conv2d``
    to itself: the inner call is the same work)."""
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith(PREFIX):
        if parent.flops:
            return True
        parent = parent.cpu_parent
    return False


def is_counted_op(event) -> bool:
    """An operator whose FLOPs count once: the profiler's own estimate (outermost), or a dzsr op
    (at the top)."""
    if event.name.startswith("dzsr::"):
        return not is_nested_dzsr_op(event)
    return bool(event.flops) and not is_inside_counted_call(event)


def summarise(events):
    time_us, calls = defaultdict(float), defaultdict(int)
    flops, read = defaultdict(float), defaultdict(float)
    for e in events:
        if e.name.startswith(PREFIX):
            name = e.name[len(PREFIX) :]
            outer = stage_of(e)
            if outer != name:  # recursion-free: count each stage's outermost ranges
                time_us[name] += e.cpu_time_total
                calls[name] += 1
            continue
        stage = stage_of(e)
        if stage is None:
            continue
        if e.cpu_parent is not None and e.cpu_parent.name == PREFIX + stage:
            read[stage] += input_bytes(e)
        if is_counted_op(e):
            for anc in ancestors(e):
                flops[anc] += op_flops(e)
    pm = [e for e in events if e.name == "dzsr::patch_match" and not is_nested_dzsr_op(e)]
    if pm:
        time_us["match / patch_match"] = sum(e.cpu_time_total for e in pm)
        calls["match / patch_match"] = len(pm)
        flops["match / patch_match"] = sum(op_flops(e) for e in pm)
    return time_us, calls, flops, read


def ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(PREFIX):
            yield parent.name[len(PREFIX) :]
        parent = parent.cpu_parent


ORDER = [
    "match",
    "match / extractor",
    "match / patch_match",
    "encode",
    "warp_encoded",
    "paste_reference",
    "estimate",
    "transform",
    "lr_features",
    "align_lr",
    "fuse",
    "predictor",
    "body",
    "upsample",
]


def main() -> None:
    import dzsr_kernels
    from dzsr.infer import DEFAULT_TILE, super_resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=687)
    parser.add_argument("--width", type=int, default=1111)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--backend", default="cpp")
    parser.add_argument(
        "--precision", default="fp32", type=H.cpu_precision, choices=("fp32", "bf16")
    )
    args = parser.parse_args()
    rate, bandwidth = matmul_rate(), copy_bandwidth()
    low_rate = matmul_rate(dtype=torch.bfloat16) if args.precision == "bf16" else rate
    model, inputs = build(args.height, args.width)
    warm_up(model, args.backend)
    with dzsr_kernels.use_backend(args.backend):  # untimed: the heap grows to its size here
        super_resolve(model, *inputs, tile=args.tile, precision=args.precision)
    instrument(model)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        with dzsr_kernels.use_backend(args.backend):
            super_resolve(model, *inputs, tile=args.tile, precision=args.precision)
    profiled_wall = time.perf_counter() - start
    time_us, calls, flops, read = summarise(prof.events())
    TIMERS.clear()  # the same run again without the profiler: the stage timers alone
    start = time.perf_counter()
    with dzsr_kernels.use_backend(args.backend):
        super_resolve(model, *inputs, tile=args.tile, precision=args.precision)
    wall = time.perf_counter() - start
    rows = []
    for name in ORDER + sorted(set(time_us) - set(ORDER)):
        if name not in time_us:
            continue
        seconds = TIMERS[name]
        stage_rate = rate if name in FLOAT32_STAGES else low_rate
        flop_floor, byte_floor = flops[name] / stage_rate, read[name] / bandwidth
        floor = max(flop_floor, byte_floor)
        rows.append(
            [
                name,
                str(calls[name]),
                f"{time_us[name] / 1e6:.2f} s",
                f"{seconds:.2f} s",
                f"{100 * seconds / wall:.1f}%",
                f"{flops[name] / 1e9:.1f}",
                f"{flop_floor:.2f} s",
                f"{read[name] / 1e6:.0f}",
                f"{byte_floor:.3f} s",
                f"{seconds / floor:.1f}x" if floor else "",
            ]
        )
    print(H.machine_line())
    print(
        f"x4 whole-image inference, LR {args.height}x{args.width}, tile {args.tile}, "
        f"backend {args.backend}, {args.precision}: {profiled_wall:.2f} s under the profiler, "
        f"{wall:.2f} s with the stage timers only; matmul "
        f"{rate / 1e9:.0f} GFLOP/s float32, {low_rate / 1e9:.0f} GFLOP/s {args.precision}, "
        f"copy {bandwidth / 1e9:.1f} GB/s"
    )
    print(
        H.markdown_table(
            [
                "stage",
                "calls",
                "profiler time",
                "time",
                "share",
                "GFLOP",
                "FLOP floor",
                "MB read",
                "byte floor",
                "x floor",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

"""Where one SelfDZSR training iteration spends its time: forward per network, backward per
autograd node type, the optimiser step.

    python -m benchmarks.profile_train [--backend cpp] [--batch 16 --size 48] [--vgg-dtype float32]

The iteration of ``benchmarks/bench_model.py``'s ``train`` case (x4, random weights, batch 16,
LR 48x48, L1 + SW loss, Adam) run once under the torch profiler after two warm-up iterations.
Rows:
  * ``forward: <network>``: the forward of each top-level network (module hooks added by this
    script around ``KernelGen``, ``MatchingExtractor``, ``RestorationNet``, the SW loss's
    ``VGG19Features`` stack), inclusive; GFLOP as the profiler counts convolutions and matmuls plus
    the dzsr ops' own counts (``profile_inference.op_flops``: the Winograd 3x3 convolution's 36
    products per tile, the deformable convolution's and patch search's), and its floor at this
    machine's float32 matmul rate (measured in the same run);
  * ``backward: <node>``: autograd's evaluation of each node type (e.g. ``ConvolutionBackward0``),
    summed over the iteration (the slowest ``BACKWARD_ROWS`` types, the rest in one row);
  * ``optimizer step`` and the rest of the iteration (``other``).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks import _harness as H
from benchmarks.bench_model import make_case
from benchmarks.profile_inference import matmul_rate, op_flops

NETWORKS = ("KernelGen", "MatchingExtractor", "RestorationNet", "VGG19Features")
BACKWARD_ROWS = 8  # the slowest node types; the others are summed in one row
FORWARD, BACKWARD = "forward: ", "autograd::engine::evaluate_function: "


def label_networks() -> None:
    """Global module hooks: a record_function range around each listed network's forward."""
    ranges = []

    def enter(module, args):
        if type(module).__name__ in NETWORKS:
            ranges.append(record_function(FORWARD + type(module).__name__).__enter__())

    def leave(module, args, out):
        if type(module).__name__ in NETWORKS:
            ranges.pop().__exit__(None, None, None)

    torch.nn.modules.module.register_module_forward_pre_hook(enter)
    torch.nn.modules.module.register_module_forward_hook(leave)


def outermost(event, prefix: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(prefix):
            return False
        parent = parent.cpu_parent
    return True


def flops_under(event) -> float:
    """FLOPs of the outermost counted operators under ``event``: those the profiler estimates and
    the dzsr ops (whose inner calls are their implementation, not more work)."""
    total, stack = 0.0, list(event.cpu_children)
    while stack:
        e = stack.pop()
        if e.flops or e.name.startswith("dzsr::"):
            total += op_flops(e)
        else:
            stack.extend(e.cpu_children)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--vgg-dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    rate = matmul_rate()
    step = make_case("train", args.backend, args.batch, args.size, vgg_dtype=args.vgg_dtype)
    step(), step()
    label_networks()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        step()
    wall = time.perf_counter() - start
    seconds, flops, calls = defaultdict(float), defaultdict(float), defaultdict(int)
    for e in prof.events():
        if e.name.startswith(FORWARD) and outermost(e, e.name):
            key = e.name
        elif e.name.startswith(BACKWARD) and outermost(e, BACKWARD):
            key = "backward: " + e.name[len(BACKWARD) :]
        elif e.name.startswith("Optimizer.step") and outermost(e, "Optimizer.step"):
            key = "optimizer step"
        else:
            continue
        seconds[key] += e.cpu_time_total / 1e6
        calls[key] += 1
        if key.startswith(FORWARD):
            flops[key] += flops_under(e)
    backward = sorted((k for k in seconds if k.startswith("backward: ")), key=lambda k: -seconds[k])
    for key in backward[BACKWARD_ROWS:]:
        seconds["backward: other nodes"] += seconds.pop(key)
        calls["backward: other nodes"] += calls.pop(key)
    seconds["other"] = wall - sum(seconds.values())
    rows = []
    for key in sorted(seconds, key=lambda k: (not k.startswith(FORWARD), -seconds[k])):
        floor = flops[key] / rate if flops[key] else None
        rows.append(
            [
                key,
                str(calls[key] or ""),
                f"{seconds[key]:.3f} s",
                f"{100 * seconds[key] / wall:.1f}%",
                f"{flops[key] / 1e9:.1f}" if floor else "",
                f"{floor:.3f} s" if floor else "",
                f"{seconds[key] / floor:.1f}x" if floor else "",
            ]
        )
    print(H.machine_line())
    print(
        f"x4 training iteration, batch {args.batch}, LR {args.size}x{args.size}, L1+SW "
        f"(VGG-19 {args.vgg_dtype}), backend {args.backend}: {wall:.2f} s under the profiler; "
        f"matmul {rate / 1e9:.0f} GFLOP/s"
    )
    print(
        H.markdown_table(["part", "calls", "time", "share", "GFLOP", "FLOP floor", "x floor"], rows)
    )


if __name__ == "__main__":
    main()

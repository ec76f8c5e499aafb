"""Size sweeps for the plots: time and peak memory of each op (ours vs its baseline) and of
whole-image inference against the image size, on one device, recorded as JSON for
``python -m benchmarks.plot``.

Each point is measured as the per-op benchmarks measure (``benchmarks/_harness.py``, with the same
case builders): median of interleaved repetitions after a warm-up; peak memory is the child-process
RSS an op adds over building its inputs (CPU) or ``max_memory_allocated`` beyond the inputs
(CUDA). The sweeps (``SWEEPS``), each on square sizes S x S:

  deform_conv  AdaSTN deformable conv, depthwise, forward+backward, (1, 64, S, S):
               ``cpp`` vs torchvision (offsets built from A, b in its timed call)
  patch_match  top-1 3x3 patch matching, query and reference (1, 64, S, S):
               ``cpp`` (streaming) vs ``reference`` (chunked conv2d)
  sw_loss      sliced-Wasserstein loss forward+backward, (1, 256, S, S): ``cpp`` vs ``reference``
  inference    x4 whole-image SR of an S x S LR image, random weights: ``cpp`` ops tiled
               (``dzsr.infer.DEFAULT_TILE``) vs ``reference`` ops untiled

Writes ``OUT/sweep-DEVICE.json`` (default ``benchmarks/results/``), replacing an earlier sweep of
that device type atomically: ``{"machine", "commit", "note", "device", "sweeps": {name: {"title",
"ours", "baseline", "points": [{"impl", "height", "width", "time_s", "peak_bytes"}]}}}``.

    python -m benchmarks.sweep [--device cpu|cuda] [--quick] [--reps 3] [--note "shared, loaded"]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks import _harness as H
from dzsr.outputs import check_output, write_bytes

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
Cases = Callable[[int, str], dict[str, tuple[str, dict]]]


@dataclass(frozen=True)
class Sweep:
    """One plot row: ``cases(S, device)`` gives ``{impl: (case, kwargs)}`` for the harness, the
    first impl being ours and the second the baseline."""

    title: str
    sizes: tuple[int, ...]
    quick_sizes: tuple[int, ...]
    cases: Cases


def _deform(s: int, device: str) -> dict[str, tuple[str, dict]]:
    shape = {"n": 1, "c": 64, "h": s, "w": s, "groups": 64, "backward": True, "device": device}
    return {
        impl: ("benchmarks.bench_deform_conv:make", {"impl": impl, **shape})
        for impl in ("cpp", "torchvision")
    }


def _match(s: int, device: str) -> dict[str, tuple[str, dict]]:
    return {
        impl: (
            "benchmarks.bench_patch_match:op_case",
            {"backend": impl, "h": s, "w": s, "c": 64, "device": device},
        )
        for impl in ("cpp", "reference")
    }


def _sw(s: int, device: str) -> dict[str, tuple[str, dict]]:
    return {
        impl: (
            "benchmarks.bench_sliced_wasserstein:make_case",
            {"shape": [1, 256, s, s], "impl": impl, "device": device},
        )
        for impl in ("cpp", "reference")
    }


def _inference(s: int, device: str) -> dict[str, tuple[str, dict]]:
    from dzsr.infer import DEFAULT_TILE

    size = {"height": s, "width": s, "device": device}
    case = "benchmarks.bench_inference:make"
    return {
        "cpp": (case, {"backend": "cpp", "tile": DEFAULT_TILE, **size}),
        "reference": (case, {"backend": "reference", "tile": None, **size}),
    }


SWEEPS = {
    "deform_conv": Sweep(
        "AdaSTN deformable conv, depthwise, fwd+bwd, (1, 64, S, S)",
        (64, 128, 192, 256),
        (16, 32),
        _deform,
    ),
    "patch_match": Sweep(
        "patch matching, 3x3 patches, (1, 64, S, S) query and reference",
        (32, 64, 96, 128),
        (16, 24),
        _match,
    ),
    "sw_loss": Sweep(
        "sliced-Wasserstein loss, fwd+bwd, (1, 256, S, S)", (32, 64, 128, 192), (16, 24), _sw
    ),
    "inference": Sweep(
        "x4 whole-image inference, LR S x S (ours tiled, reference untiled)",
        (48, 96, 144, 192),
        (24, 32),
        _inference,
    ),
}


def measure(sweep: Sweep, device: str, quick: bool, reps: int) -> list[dict]:
    """One point per (size, impl): ``{"impl", "height", "width", "time_s", "peak_bytes"}``."""
    points = []
    for s in sweep.quick_sizes if quick else sweep.sizes:
        cases = sweep.cases(s, device)
        cuda = device.startswith("cuda")
        # CPU memory first, while this process holds no inputs (benchmarks/_harness.py)
        memory = {} if cuda else {impl: H.peak_cpu_memory(*spec) for impl, spec in cases.items()}
        thunks = {impl: H.build(*spec) for impl, spec in cases.items()}
        times = H.time_interleaved(thunks, reps=reps, warmup=1, device=device)
        if cuda:
            memory = {impl: H.peak_cuda_memory(fn) for impl, fn in thunks.items()}
        del thunks
        for impl in cases:
            points.append(
                {
                    "impl": impl,
                    "height": s,
                    "width": s,
                    "time_s": times[impl],
                    "peak_bytes": memory[impl],
                }
            )
            print(
                f"{sweep.title} | S={s} | {impl} | {H.fmt_time(times[impl])} | "
                f"{H.fmt_bytes(memory[impl])}",
                flush=True,
            )
    return points


def _commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="two tiny sizes per sweep (smoke run)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=list(SWEEPS), help="run only these sweeps")
    parser.add_argument("--note", default="", help="said on the plots, e.g. 'shared, loaded'")
    parser.add_argument("--out", default=RESULTS, help=f"results folder (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    path = check_output(os.path.join(args.out, f"sweep-{args.device}.json"), "--out", (".json",))
    record = {
        "machine": H.machine_line(),
        "commit": _commit(),
        "note": args.note,
        "device": args.device,
        "sweeps": {},
    }
    for name in args.only or SWEEPS:
        sweep = SWEEPS[name]
        impls = list(sweep.cases(1, args.device))
        record["sweeps"][name] = {
            "title": sweep.title,
            "ours": impls[0],
            "baseline": impls[1],
            "points": measure(sweep, args.device, args.quick, args.reps),
        }
    write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

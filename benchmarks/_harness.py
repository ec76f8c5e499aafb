"""Measurement helpers shared by every benchmark (docs/design.md#measuring).

Time: cases run interleaved in one process after a warm-up; the median of the repetitions is
reported (CUDA: synchronised, CUDA events). Peak CPU memory: each case runs in a fresh child
process that reads its peak RSS at the end; a second child builds the same inputs and imports the
same modules but skips the op, and the difference is reported. The peak is ``VmHWM`` of
``/proc/self/status``, which is ``ru_maxrss`` without its inheritance: Linux carries a parent's
high-water mark into ``ru_maxrss`` of a child it spawns, so a large benchmark parent would hide the
child's own peak.

Allocator: importing this module applies the package's allocator setup (``dzsr.allocator``, as the
``dzsr`` command does), so both sides of every comparison, the timing process and the memory
children alike (they import this module first), run under the same one; ``machine_line`` states it.

A case is named by ``"module:function"`` plus JSON-able keyword arguments; the function builds the
inputs and returns a zero-argument callable that runs the op once.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from dzsr import allocator

ALLOCATOR = allocator.configure()


def build(case: str, kwargs: dict) -> Callable[[], object]:
    module, func = case.split(":")
    return getattr(importlib.import_module(module), func)(**kwargs)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    thunks: dict[str, Callable[[], object]], reps: int = 5, warmup: int = 1, device: str = "cpu"
) -> dict[str, float]:
    """Median seconds per call of each thunk, measured round-robin after ``warmup`` calls each."""
    for fn in thunks.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {k: [] for k in thunks}
    for _ in range(reps):
        for name, fn in thunks.items():
            if device.startswith("cuda"):
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                samples[name].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def peak_rss_kib() -> int:
    """This process's own peak resident set size in KiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child_rss(case: str, kwargs: dict, run: bool, env: dict | None = None) -> int:
    code = (
        "import json,sys;from benchmarks._harness import build,peak_rss_kib;"
        f"fn=build({case!r}, json.loads(sys.argv[1]));"
        + ("fn();" if run else "")
        + "print(peak_rss_kib())"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {case} failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def peak_cpu_memory(case: str, kwargs: dict, env: dict | None = None) -> int:
    """Bytes of peak RSS the op adds over building its inputs (child processes, docs/design.md#measuring)."""
    return max(0, _child_rss(case, kwargs, True, env) - _child_rss(case, kwargs, False, env))


def peak_cuda_memory(fn: Callable[[], object]) -> int:
    """Bytes of peak CUDA memory allocated while running ``fn`` beyond what was allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def machine_line() -> str:
    dev = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU {platform.processor() or platform.machine()}"
    )
    return (
        f"{datetime.date.today()} · {dev} · {os.cpu_count()} cores · torch {torch.__version__} · "
        f"{torch.get_num_threads()} threads · python {platform.python_version()} · allocator: {ALLOCATOR}"
    )


def fmt_time(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.2f} s"


def fmt_bytes(b: float) -> str:
    return f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)

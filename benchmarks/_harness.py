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

import argparse
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


def _child_run(case: str, kwargs: dict, run: bool, env: dict | None = None) -> tuple[int, float]:
    """(peak RSS in bytes, seconds after the build) of a child process that builds ``case`` and,
    with ``run``, calls its thunk once."""
    code = (
        "import json,sys,time;from benchmarks._harness import build,peak_rss_kib;"
        f"fn=build({case!r}, json.loads(sys.argv[1]));t=time.perf_counter();"
        + ("fn();" if run else "")
        + "print(peak_rss_kib(), time.perf_counter()-t)"
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
    rss, seconds = out.stdout.strip().splitlines()[-1].split()
    return int(rss) * 1024, float(seconds)


def fresh_process_run(case: str, kwargs: dict, env: dict | None = None) -> tuple[int, float]:
    """(bytes of peak RSS the call adds over building its inputs, seconds of the call) in fresh
    child processes (docs/design.md#measuring): the time is the first call of a process, what a
    command-line user waits, heap growth and first-use costs included."""
    ran, seconds = _child_run(case, kwargs, True, env)
    built, _ = _child_run(case, kwargs, False, env)
    return max(0, ran - built), seconds


def peak_cpu_memory(case: str, kwargs: dict, env: dict | None = None) -> int:
    """Bytes of peak RSS the op adds over building its inputs (child processes, docs/design.md#measuring)."""
    return fresh_process_run(case, kwargs, env)[0]


def peak_cuda_memory(fn: Callable[[], object]) -> int:
    """Bytes of peak CUDA memory allocated while running ``fn`` beyond what was allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def cpu_precision(name: str) -> str:
    """argparse ``type`` of a ``--precision`` that runs on this CPU: the package's own refusal
    (``dzsr.infer.autocast_dtype``: an unknown name, fp16, bf16 without bfloat16 arithmetic) becomes
    the parser's one-line error."""
    from dzsr.infer import autocast_dtype  # after the allocator setup above

    try:
        autocast_dtype(name, "cpu", "--precision")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def cpu_isa() -> str:
    """The vector ISA PyTorch's CPU kernels use here and whether the CPU has bfloat16 arithmetic:
    CPUs of one name differ between virtual machines (AVX-512 BF16 in one session, AVX2 only in
    another), and both change every CPU table."""
    from dzsr.infer import native_bfloat16  # after the allocator setup above

    bf16 = "native" if native_bfloat16() else "emulated"
    return f"ISA {torch.backends.cpu.get_cpu_capability()}, bfloat16 {bf16}"


def machine_line() -> str:
    dev = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU {platform.processor() or platform.machine()}"
    )
    return (
        f"{datetime.date.today()} · {dev} · {os.cpu_count()} cores · {cpu_isa()} · "
        f"torch {torch.__version__} · "
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

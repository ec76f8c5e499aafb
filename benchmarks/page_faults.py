"""Minor page faults, wall and system time of one default whole-image run, in this process.

    python -m benchmarks.page_faults [--allocator package|system] [--height 687 --width 1111]

One ``dzsr.infer.super_resolve`` (x4, tile 384, ``cpp``) of the random-weight model and images of
``benchmarks/bench_inference.py``, measured with ``getrusage`` around the call. ``package`` applies
``dzsr.allocator.configure()`` (what the CLI and the benchmark harness do); ``system`` sets
``DZSR_ALLOCATOR=system`` first, so the harness (imported with the benchmark's model builder) leaves
glibc as the environment set it (``MALLOC_*`` variables, ``GLIBC_TUNABLES``) and other setups can be
compared the same way. The allocator line printed first says which setup ran.
"""

from __future__ import annotations

import argparse
import os
import resource
import time


def main(argv=None) -> None:
    """Print one line: setup, wall, minor faults, user and system time, peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocator", choices=("package", "system"), default="package")
    parser.add_argument("--height", type=int, default=687)
    parser.add_argument("--width", type=int, default=1111)
    args = parser.parse_args(argv)
    if args.allocator == "system":
        os.environ["DZSR_ALLOCATOR"] = "system"
    from dzsr import allocator

    print("allocator:", allocator.configure())
    import dzsr_kernels
    from benchmarks.bench_inference import build
    from dzsr.infer import super_resolve

    model, inputs = build(args.height, args.width)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with dzsr_kernels.use_backend("cpp"):
        super_resolve(model, *inputs)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{args.allocator}: wall {wall:.1f} s, minor faults {after.ru_minflt - before.ru_minflt}, "
        f"user {after.ru_utime - before.ru_utime:.1f} s, sys {after.ru_stime - before.ru_stime:.1f} s, "
        f"peak RSS {after.ru_maxrss / 2**20:.2f} GiB"
    )


if __name__ == "__main__":
    main()

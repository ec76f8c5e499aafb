"""Process-wide allocator setup that the package applies itself (``dzsr`` CLI start, benchmarks).

Why: PyTorch on CPU frees and re-allocates the same large buffers for every tile and stage.
glibc's default malloc serves buffers above its mmap threshold (128 KiB, rising dynamically to at
most 32 MiB) with ``mmap`` and gives them back with ``munmap``, and trims the heap top above 128 KiB;
every reuse is then faulted in again and zeroed by the kernel page by page. On a shared 2-core
machine (glibc 2.36), ``dzsr sr --backend cpp --tile 128`` on an LR 344x556 image (the bundled
motorcycle sample upscaled), medians of 3 runs: system allocator 18.1 s wall, 23.7 s user, 7.1 s
system, 2.93 million minor faults, peak RSS 1.29 GB; with this setup 14.0 s wall, 22.6 s user, 1.2 s
system, 0.30 million faults, peak 1.60 GB.

What (``configure``): on glibc only, ``mallopt`` through ``ctypes`` in the running process (no
re-exec, no environment variables; they would only act on a process started afterwards):

* ``M_ARENA_MAX = 1``: every thread allocates from the main heap, to which the settings below apply
  (worker threads' own arenas are ``mmap``-ed sub-heaps that shrink page by page whatever they say);
* ``M_MMAP_MAX = 0``: no allocation is served by ``mmap`` (glibc still falls back to ``mmap`` when
  the heap cannot grow), so freed buffers stay in the heap for the next tile;
* ``M_TRIM_THRESHOLD = -1`` (the largest size: never): free memory at the heap top is kept for reuse
  instead of being returned to the system and faulted in again;
* ``M_TOP_PAD = 64 MiB``: the heap grows in steps of at least 64 MiB.

Measured on the CPU machine, idle, 2026-12-02, one default whole-image run in process
(``super_resolve``, random LR 687x1111, x4, tile 384, ``cpp``; minor faults, wall, system time, peak
RSS of the process): the previous setup (no arena limit, trim 1 GiB) 4.30-4.32 million faults, 54.7 s
(a first run 110.7 s), 11.5-12.3 s system, 3.44-3.83 GiB; one arena but trim 1 GiB 4.37 million, 56.1 s,
12.8 s; one arena and trim 16 GiB (as environment variables) 0.71-0.72 million, 46.6-47.1 s, 1.5-1.6 s,
3.43-3.46 GiB; this setup (through ``mallopt``) 0.76-0.97 million, 45.2-49.3 s, 1.8-2.2 s, 3.63-4.42 GiB
(peak RSS varies by ~0.5 GiB between runs of one setup).
Neither change alone helps: the worker threads' arenas and the trims of the main heap each return
and re-fault gigabytes per run. Transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, which
needs a re-exec) gave 12-15 thousand faults but 20-27 s system time and 58-61 s wall.

Measured alternatives (same run): the issue's variables set through ``mallopt`` with a small top pad
(``M_MMAP_THRESHOLD`` 4 GiB, trim 16 GiB, pad 64 MiB) gave 4.8 million faults (worse than glibc's
default, since thread arenas still grow and shrink in small steps); with pad 1 GiB 0.37 million faults
but a peak of 1.78 GB. jemalloc and tcmalloc would need ``LD_PRELOAD`` before the process starts, are
not on the Python package index as well-kept wheels, and are not needed for this.

Memory cost: freed memory is kept for reuse, so the peak resident set grows: 1.29 -> 1.60 GB in the
run above, +24% (the issue's own run: 2.8 -> 3.3 GB with its variables).

When (safety): the setup is applied only when all hold, else the process keeps the system allocator
and ``configure`` says why:

* ``DZSR_ALLOCATOR`` is unset, empty or ``auto`` (``system``: opt out; any other value: ValueError
  naming the variable);
* the C library is glibc (``platform.libc_ver()``);
* the user set no allocator of their own: no ``MALLOC_*`` environment variable, no ``glibc.malloc.``
  tunable in ``GLIBC_TUNABLES``, and no ``LD_PRELOAD`` (a preloaded allocator such as jemalloc).

``configure`` runs once per process (later calls return the first answer); ``fork``-ed children
(DataLoader workers) inherit the settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

VARIABLE = "DZSR_ALLOCATOR"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8  # glibc <malloc.h>
NEVER = (
    -1
)  # mallopt's int -1 becomes glibc's size_t threshold SIZE_MAX: the heap top is never trimmed
SETTINGS = (
    (M_ARENA_MAX, "M_ARENA_MAX", 1),
    (M_MMAP_MAX, "M_MMAP_MAX", 0),
    (M_TRIM_THRESHOLD, "M_TRIM_THRESHOLD", NEVER),
    (M_TOP_PAD, "M_TOP_PAD", 64 << 20),
)
DESCRIPTION = "glibc mallopt M_ARENA_MAX=1 M_MMAP_MAX=0 M_TRIM_THRESHOLD=never M_TOP_PAD=64MiB"

_state: str | None = None


def _reason_to_skip(env) -> str | None:
    """Why the setup must not be applied under ``env`` (None: it may)."""
    choice = env.get(VARIABLE, "")
    if choice not in ("", "auto", "system"):
        raise ValueError(f"environment variable {VARIABLE} must be auto or system, got {choice!r}")
    if choice == "system":
        return f"{VARIABLE}=system"
    if platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    user = sorted(k for k in env if k.startswith("MALLOC_"))
    if user:
        return f"the user set {user[0]}"
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "the user set glibc.malloc tunables in GLIBC_TUNABLES"
    if env.get("LD_PRELOAD"):
        return "LD_PRELOAD is set (a preloaded allocator is left alone)"
    return None


def configure(env=None) -> str:
    """Apply the setup when it is safe (see the module docstring); return what the process runs
    with: ``DESCRIPTION``, or ``"system (<why>)"``. ``env``: the environment to judge (default
    ``os.environ``). Once per process; ValueError for a bad ``DZSR_ALLOCATOR``."""
    global _state
    if _state is not None:
        return _state
    reason = _reason_to_skip(os.environ if env is None else env)
    if reason is None:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        refused = [name for param, name, value in SETTINGS if mallopt(param, value) != 1]
        reason = f"mallopt refused {', '.join(refused)}" if refused else None
    _state = DESCRIPTION if reason is None else f"system ({reason})"
    return _state

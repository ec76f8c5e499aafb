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

* ``M_MMAP_MAX = 0``: no allocation is served by ``mmap`` (glibc still falls back to ``mmap`` when
  the heap cannot grow), so freed buffers stay in the heap for the next tile;
* ``M_TRIM_THRESHOLD = 1 GiB``: free memory at the heap top is returned to the system only above 1 GiB;
* ``M_TOP_PAD = 64 MiB``: the heap grows in steps of at least 64 MiB.

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
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # glibc <malloc.h>
SETTINGS = (
    (M_MMAP_MAX, "M_MMAP_MAX", 0),
    (M_TRIM_THRESHOLD, "M_TRIM_THRESHOLD", 1 << 30),
    (M_TOP_PAD, "M_TOP_PAD", 64 << 20),
)
DESCRIPTION = "glibc mallopt M_MMAP_MAX=0 M_TRIM_THRESHOLD=1GiB M_TOP_PAD=64MiB"

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

"""Loading the C++/CUDA kernels of ``csrc/`` (the ``cpp`` backend).

Order: a prebuilt ``dzsr_kernels/_C*.so`` (``DZSR_BUILD_EXT=1 pip install .``), else a ninja JIT
build of ``csrc/`` on first use, cached under ``$DZSR_CACHE_DIR`` (default ``~/.cache/dzsr``). CUDA
sources are compiled when torch sees a GPU and nvcc is found (``CUDA_HOME``, default
``/usr/local/cuda``). ``DZSR_NO_JIT=1`` disables the JIT build. The kernels register themselves as
``torch.ops.dzsr_C.*``. A failed build leaves the backend unavailable; its reason names the
compiler log and the torch it was building for. Each build writes the torch version it was
compiled against into ``_C_torch_version.txt`` next to the library (the JIT folder, or the package
for setup.py's prebuilt one); ``built_against()`` reports it for ``dzsr info``.

Build cache. Each build has its own folder, named by the torch version, CPU/CUDA and machine, plus a
hash of everything that determines the binary: the bytes and relative paths of every file under
``csrc/``, the compiler flags, the CUDA toolkit path, the torch/CUDA/Python versions, and the CPU's
instruction-set flags (``native_cpu``): the C++ code is compiled with ``-march=native``, so a build
made on an AVX-512 machine would die of an illegal instruction on an AVX2-only one sharing the cache
(a home folder mounted on a cluster's mixed nodes, virtual machines of one CPU name). Two checkouts or
two dzsr versions on one machine therefore never share or overwrite a build, and an edited source
gets a fresh folder. Old folders are never deleted automatically (another checkout may use them);
``rm -r ~/.cache/dzsr`` is always safe.

Concurrent and killed builds. Every build holds an exclusive ``fcntl`` lock on ``dzsr-build.lock`` in
its folder; the kernel releases it when the process dies. A second process waits for it (saying so once
on stderr, for at most ``DZSR_BUILD_WAIT`` seconds, default 1800, then the backend is unavailable with
that reason). Holding it, a leftover ``lock`` file of torch's own builder can only come from a killed
build; with the torch versions whose lock blocks while that file exists (``FileBaton``, before 2.14)
it is removed, with a message, instead of making torch wait for it forever (torch 2.14 locks that file
with the OS, so its leftover is harmless and left alone).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC_DIR = PACKAGE_DIR.parent / "csrc"
EXTRA_CFLAGS = ["-O3", "-fopenmp", "-march=native"]
EXTRA_CUDA_CFLAGS = ["-O3", "--use_fast_math", "-lineinfo"]

VERSION_RECORD = "_C_torch_version.txt"  # next to a built library: the torch it was built against

_lock = threading.Lock()
_state: dict[str, str | None] = {}  # "error" -> reason or None once tried; "built_against"


def cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return home if os.path.exists(os.path.join(home, "bin", "nvcc")) else None


def sources(with_cuda: bool) -> list[str]:
    pattern = ["*.cpp"] + (["*.cu"] if with_cuda else [])
    found = []
    for pat in pattern:
        found += glob.glob(str(CSRC_DIR / "**" / pat), recursive=True)
    return sorted(found)


def native_cpu() -> str:
    """What ``-march=native`` compiles for on this machine: the sorted instruction-set flags of
    ``/proc/cpuinfo`` on Linux (the first processor's; they are the same on every core), else the
    processor's name from ``platform``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 / Arm
                    return " ".join(sorted(value.split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key(with_cuda: bool, csrc_dir: Path = CSRC_DIR) -> str:
    """The cache folder name of a build: readable tag + 16 hex digits of the hash described above."""
    digest = hashlib.sha256()
    for path in sorted(p for p in csrc_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(csrc_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    settings = (
        EXTRA_CFLAGS,
        EXTRA_CUDA_CFLAGS,
        with_cuda,
        cuda_home() if with_cuda else None,
        torch.__version__,
        torch.version.cuda,
        sys.version_info[:2],
        platform.machine(),
        native_cpu(),
    )
    digest.update(repr(settings).encode())
    tag = f"torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}-{platform.machine()}".replace(
        "+", "_"
    )
    return f"{tag}-{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def build_lock(build_dir: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold the exclusive build lock of ``build_dir`` (see the module docstring); raises TimeoutError
    after ``wait_s`` seconds (default ``$DZSR_BUILD_WAIT`` or 1800) if another process keeps it."""
    wait_s = float(os.environ.get("DZSR_BUILD_WAIT", 1800)) if wait_s is None else wait_s
    with open(Path(build_dir) / "dzsr-build.lock", "a+") as handle:
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another process has been building the C++ kernels in {build_dir} for over "
                        f"{wait_s:.0f} s (DZSR_BUILD_WAIT); kill it or delete that folder"
                    ) from None
                if not told:
                    print(
                        f"dzsr: waiting for another process building the C++ kernels in {build_dir}",
                        file=sys.stderr,
                    )
                    told = True
                time.sleep(0.2)
        try:
            stale = Path(build_dir) / "lock"  # torch.utils.cpp_extension's own lock file
            if stale.exists() and _torch_lock_blocks_by_existence():
                print(
                    f"dzsr: removing {stale}, left by a killed build; rebuilding", file=sys.stderr
                )
                stale.unlink()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _torch_lock_blocks_by_existence() -> bool:
    """True for torch builds whose JIT lock (``FileBaton``) blocks while its file exists, so a killed
    build deadlocks every later one; torch >= 2.14 holds an OS lock on that file instead (released
    when the holder dies) and its leftover file is harmless."""
    from torch.utils import cpp_extension

    return not hasattr(cpp_extension, "FileLock")


def build(with_cuda: bool, build_dir: str | None = None, verbose: bool = False) -> str:
    """JIT-build ``csrc/`` and load it into ``torch.ops.dzsr_C``; returns the build folder."""
    if cuda_home() is not None:
        os.environ.setdefault("CUDA_HOME", cuda_home())
    if (
        not with_cuda
    ):  # its import warns that no CUDA runtime exists, which a CPU build doesn't need
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    if with_cuda:
        home = cuda_home()
        if home is None:
            raise RuntimeError("nvcc not found: set CUDA_HOME to the CUDA toolkit")
        os.environ["CUDA_HOME"] = home
        cpp_extension.CUDA_HOME = home
    files = sources(with_cuda)
    cache = Path(os.environ.get("DZSR_CACHE_DIR", Path.home() / ".cache" / "dzsr"))
    build_dir = build_dir or str(cache / build_key(with_cuda))
    os.makedirs(build_dir, exist_ok=True)
    log = Path(build_dir) / "build.log"
    try:
        with build_lock(build_dir):
            _load_sources(cpp_extension, files, with_cuda, build_dir, verbose)
    except TimeoutError as exc:
        raise RuntimeError(str(exc)) from exc
    except Exception as exc:
        log.write_text(f"{type(exc).__name__}: {exc}\n")
        target = f"CUDA {torch.version.cuda}" if with_cuda else "CPU"
        raise RuntimeError(
            f"building csrc/ for torch {torch.__version__} ({target}) failed; compiler log: {log}"
        ) from exc
    (Path(build_dir) / VERSION_RECORD).write_text(f"{torch.__version__}\n")
    return build_dir


def _recorded_version(folder: Path) -> str | None:
    record = folder / VERSION_RECORD
    return record.read_text().strip() if record.is_file() else None


def built_against() -> str | None:
    """The torch version the loaded C++ kernels were compiled against (their build's record), or
    None when they are not loaded (yet) or have no record (a library built before records)."""
    return _state.get("built_against")


def _load_sources(
    cpp_extension, files: list[str], with_cuda: bool, build_dir: str, verbose: bool
) -> None:
    """Compile (ninja rebuilds what changed) and load ``files`` as ``torch.ops.dzsr_C``."""
    cpp_extension.load(
        name="dzsr_kernels_C",
        sources=files,
        extra_cflags=EXTRA_CFLAGS + (["-DDZSR_WITH_CUDA"] if with_cuda else []),
        extra_cuda_cflags=EXTRA_CUDA_CFLAGS,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(CSRC_DIR)],
        build_directory=build_dir,
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=verbose,
    )


def _load() -> str | None:
    """Load the kernels once; None on success, else the reason they are unavailable."""
    prebuilt = sorted(PACKAGE_DIR.glob("_C*.so"))
    if prebuilt:
        recorded = _recorded_version(PACKAGE_DIR)
        try:
            torch.ops.load_library(str(prebuilt[0]))
        except Exception as exc:
            return (
                f"prebuilt {prebuilt[0]} (built against torch {recorded or 'unrecorded'}) "
                f"failed to load into torch {torch.__version__}: {exc}"
            )
        _state["built_against"] = recorded
        return None
    if os.environ.get("DZSR_NO_JIT") == "1":
        return "no prebuilt extension and DZSR_NO_JIT=1 disables the JIT build"
    if not CSRC_DIR.is_dir():
        return f"no prebuilt extension and no C++ sources at {CSRC_DIR} (install with DZSR_BUILD_EXT=1)"
    with_cuda = torch.cuda.is_available() and cuda_home() is not None
    try:
        _state["built_against"] = _recorded_version(Path(build(with_cuda)))
    except Exception as exc:
        return str(exc)
    return None


def unavailable_reason(device_type: str) -> str | None:
    """None if the ``cpp`` kernels can run on ``device_type``, else why not."""
    with _lock:
        if "error" not in _state:
            _state["error"] = _load()
    if _state["error"] is not None:
        return _state["error"]
    if device_type == "cpu":
        return None
    if device_type == "cuda":
        if not torch.ops.dzsr_C.has_cuda():
            return "the C++ extension was built without CUDA (no GPU or no nvcc at build time)"
        return None
    return f"no C++ kernels for device type {device_type!r}"

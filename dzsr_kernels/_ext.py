"""Loading the C++/CUDA kernels of ``csrc/`` (the ``cpp`` backend).

Order: a prebuilt ``dzsr_kernels/_C*.so`` (``DZSR_BUILD_EXT=1 pip install .``), else a ninja JIT
build of ``csrc/`` on first use, cached under ``$DZSR_CACHE_DIR`` (default ``~/.cache/dzsr``) in a
folder keyed by the torch version and the CUDA setting (ninja rebuilds what changed). CUDA sources are
compiled when torch sees a GPU and nvcc is found (``CUDA_HOME``, default ``/usr/local/cuda``).
``DZSR_NO_JIT=1`` disables the JIT build. The kernels register themselves as ``torch.ops.dzsr_C.*``.
A failed build leaves the backend unavailable; its reason names the compiler log.
"""
from __future__ import annotations

import glob
import logging
import os
import platform
import threading
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC_DIR = PACKAGE_DIR.parent / "csrc"
EXTRA_CFLAGS = ["-O3", "-fopenmp", "-march=native"]
EXTRA_CUDA_CFLAGS = ["-O3", "--use_fast_math", "-lineinfo"]

_lock = threading.Lock()
_state: dict[str, str | None] = {}  # "error" -> reason or None once tried


def cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return home if os.path.exists(os.path.join(home, "bin", "nvcc")) else None


def sources(with_cuda: bool) -> list[str]:
    pattern = ["*.cpp"] + (["*.cu"] if with_cuda else [])
    found = []
    for pat in pattern:
        found += glob.glob(str(CSRC_DIR / "**" / pat), recursive=True)
    return sorted(found)


def build(with_cuda: bool, build_dir: str | None = None, verbose: bool = False) -> str:
    """JIT-build ``csrc/`` and load it into ``torch.ops.dzsr_C``; returns the build folder."""
    if cuda_home() is not None:
        os.environ.setdefault("CUDA_HOME", cuda_home())
    if not with_cuda:  # its import warns that no CUDA runtime exists, which a CPU build doesn't need
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    if with_cuda:
        home = cuda_home()
        if home is None:
            raise RuntimeError("nvcc not found: set CUDA_HOME to the CUDA toolkit")
        os.environ["CUDA_HOME"] = home
        cpp_extension.CUDA_HOME = home
    files = sources(with_cuda)
    tag = f"torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}-{platform.machine()}"
    cache = Path(os.environ.get("DZSR_CACHE_DIR", Path.home() / ".cache" / "dzsr"))
    build_dir = build_dir or str(cache / tag.replace("+", "_"))
    os.makedirs(build_dir, exist_ok=True)
    log = Path(build_dir) / "build.log"
    try:
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
    except Exception as exc:
        log.write_text(f"{type(exc).__name__}: {exc}\n")
        raise RuntimeError(f"building csrc/ failed; compiler log: {log}") from exc
    return build_dir


def _load() -> str | None:
    """Load the kernels once; None on success, else the reason they are unavailable."""
    prebuilt = sorted(PACKAGE_DIR.glob("_C*.so"))
    if prebuilt:
        try:
            torch.ops.load_library(str(prebuilt[0]))
            return None
        except Exception as exc:
            return f"prebuilt {prebuilt[0]} failed to load: {exc}"
    if os.environ.get("DZSR_NO_JIT") == "1":
        return "no prebuilt extension and DZSR_NO_JIT=1 disables the JIT build"
    if not CSRC_DIR.is_dir():
        return f"no prebuilt extension and no C++ sources at {CSRC_DIR} (install with DZSR_BUILD_EXT=1)"
    with_cuda = torch.cuda.is_available() and cuda_home() is not None
    try:
        build(with_cuda)
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

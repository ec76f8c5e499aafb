"""Builds the CUDA files of csrc/ for CPU threads (tests/cuda_emulation/: each ``<op>_emulated.cpp``
includes one ``.cu`` with -DDZSR_CUDA_EMULATION and registers its host functions under a test-only
namespace), so the emulation tests run the real kernels and host code against the references on a
machine without a GPU."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


@functools.cache
def emulated_library(namespace: str, source: str):
    """torch.ops.<namespace> after building tests/cuda_emulation/<source>: once per process (a
    TORCH_LIBRARY namespace can be registered once), in a fixed folder of the temp dir named after
    the namespace, which ninja updates when the sources change."""
    from torch.utils.cpp_extension import load

    build = Path(tempfile.gettempdir()) / f"{namespace}_build"
    build.mkdir(exist_ok=True)
    load(
        name=namespace,
        sources=[str(HERE / "cuda_emulation" / source)],
        extra_cflags=["-O1", "-pthread"],
        extra_ldflags=["-pthread"],
        extra_include_paths=[str(HERE.parent / "csrc"), str(HERE / "cuda_emulation")],
        is_python_module=False,
        build_directory=str(build),
    )
    return getattr(torch.ops, namespace)

"""Build script. Metadata lives in pyproject.toml.

By default nothing is compiled: the C++/CUDA kernels of csrc/ are JIT-built with ninja on first use
(dzsr_kernels/_ext.py). ``DZSR_BUILD_EXT=1 pip install --no-build-isolation .`` prebuilds them into
``dzsr_kernels/_C*.so`` instead, including the CUDA sources when nvcc is found (CUDA_HOME, default
/usr/local/cuda) unless ``DZSR_NO_CUDA=1``.
"""
import glob
import os

from setuptools import setup


def extensions():
    if os.environ.get("DZSR_BUILD_EXT") != "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    from dzsr_kernels._ext import CSRC_DIR, EXTRA_CFLAGS, EXTRA_CUDA_CFLAGS, cuda_home, sources

    with_cuda = cuda_home() is not None and os.environ.get("DZSR_NO_CUDA") != "1"
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home()
    cflags = EXTRA_CFLAGS + (["-DDZSR_WITH_CUDA"] if with_cuda else [])
    make = CUDAExtension if with_cuda else CppExtension
    ext = make(
        "dzsr_kernels._C",
        [os.path.relpath(s) for s in sources(with_cuda)],
        include_dirs=[str(CSRC_DIR)],
        extra_compile_args={"cxx": cflags, "nvcc": EXTRA_CUDA_CFLAGS},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

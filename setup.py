"""Build script. Metadata lives in pyproject.toml.

By default nothing is compiled: the C++/CUDA kernels of csrc/ are JIT-built with ninja on first use
(dzsr_kernels/_ext.py). ``DZSR_BUILD_EXT=1 pip install --no-build-isolation .`` prebuilds them into
``dzsr_kernels/_C*.so`` instead, including the CUDA sources when nvcc is found (CUDA_HOME, default
/usr/local/cuda) unless ``DZSR_NO_CUDA=1``, with ``_C_torch_version.txt`` beside it naming the
torch it was built against (``dzsr info``).
"""

import os

from setuptools import setup


def extensions():
    """``(ext_modules, cmdclass)`` for ``setup``: none unless ``DZSR_BUILD_EXT=1``; then the
    ``dzsr_kernels._C`` extension (with the CUDA sources when nvcc is found, unless
    ``DZSR_NO_CUDA=1``) and a ``build_ext`` that also writes the torch version beside it."""
    if os.environ.get("DZSR_BUILD_EXT") != "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    from dzsr_kernels._ext import (
        CSRC_DIR,
        EXTRA_CFLAGS,
        EXTRA_CUDA_CFLAGS,
        PACKAGE_DIR,
        VERSION_RECORD,
        cuda_home,
        sources,
    )

    def record(folder):
        with open(os.path.join(folder, VERSION_RECORD), "w") as f:
            f.write(f"{torch.__version__}\n")

    class BuildWithVersionRecord(BuildExtension):
        """Also writes, next to the library, the torch version it is compiled against."""

        def build_extension(self, ext):  # into the build folder (wheels)
            super().build_extension(ext)
            record(os.path.dirname(self.get_ext_fullpath(ext.name)))

        def run(self):  # --inplace and editable installs copy the library into the sources
            super().run()
            if self.inplace:
                record(PACKAGE_DIR)

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
    return [ext], {"build_ext": BuildWithVersionRecord}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

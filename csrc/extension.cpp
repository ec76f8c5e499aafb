// Library-level registration of the dzsr_C op namespace. Each op's schemas are defined, for every
// device, in csrc/<op>/<op>.cpp (TORCH_LIBRARY_FRAGMENT); its device files <op>_cpu.cpp and
// <op>_cuda.cu only register kernels for them (TORCH_LIBRARY_IMPL).
#include <torch/library.h>

namespace {
bool has_cuda() {
#ifdef DZSR_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(dzsr_C, m) { m.def("has_cuda() -> bool", &has_cuda); }

// Library-level registration of the dzsr_C op namespace; each op's files add their own
// definitions (TORCH_LIBRARY_FRAGMENT) and CPU/CUDA implementations.
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

TORCH_LIBRARY_FRAGMENT(dzsr_C, m) {
  m.def("has_cuda() -> bool", &has_cuda);
}

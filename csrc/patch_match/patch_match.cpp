// Schema of top-1 patch matching, torch.ops.dzsr_C.patch_match, one definition for every device:
// patch_match_cpu.cpp and patch_match_cuda.cu only register their kernels for it
// (TORCH_LIBRARY_IMPL). Arguments, layouts and semantics: the backend interface in
// dzsr_kernels/patch_match/op.py and reference.py; the caller is patch_match/cpp_kernel.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dzsr_C, m) {
  m.def(
      "patch_match(Tensor uq, Tensor ur, Tensor inv_q, Tensor inv_r, int patch_size) "
      "-> (Tensor, Tensor)");
}

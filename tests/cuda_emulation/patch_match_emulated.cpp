// The CUDA patch-match kernel and its host code (csrc/patch_match/patch_match_cuda.cu), built for
// CPU threads with the execution-model stand-in of cuda_emulation.h and registered as
// torch.ops.dzsr_pm_cuda_emu.patch_match for the emulation tests.
#define DZSR_CUDA_EMULATION
#include "patch_match/patch_match_cuda.cu"

TORCH_LIBRARY(dzsr_pm_cuda_emu, m) {
  m.def(
      "patch_match(Tensor uq, Tensor ur, Tensor inv_q, Tensor inv_r, int patch_size) "
      "-> (Tensor, Tensor)",
      &patch_match_cuda);
}

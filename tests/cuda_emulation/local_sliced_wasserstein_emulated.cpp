// The CUDA local sliced-Wasserstein forward
// (csrc/local_sliced_wasserstein/local_sliced_wasserstein_cuda.cu), built for CPU threads with the
// execution-model stand-in of cuda_emulation.h and registered as
// torch.ops.dzsr_losw_cuda_emu.local_sliced_wasserstein_forward for the emulation tests.
#define DZSR_CUDA_EMULATION
#include "local_sliced_wasserstein/local_sliced_wasserstein_cuda.cu"

TORCH_LIBRARY(dzsr_losw_cuda_emu, m) {
  m.def(
      "local_sliced_wasserstein_forward(Tensor u, Tensor v, Tensor proj, int window, int stride, "
      "bool need_v_count) -> (Tensor, Tensor, Tensor)",
      &dzsr::losw::forward_cuda);
}

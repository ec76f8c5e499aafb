// The CUDA sliced-Wasserstein forward and backward
// (csrc/sliced_wasserstein/sliced_wasserstein_cuda.cu), built for CPU threads with the
// execution-model stand-in of cuda_emulation.h and registered as
// torch.ops.dzsr_sw_cuda_emu.sliced_wasserstein_{forward,backward} for the emulation tests.
#define DZSR_CUDA_EMULATION
#include "sliced_wasserstein/sliced_wasserstein_cuda.cu"

TORCH_LIBRARY(dzsr_sw_cuda_emu, m) {
  m.def(
      "sliced_wasserstein_forward(Tensor u, Tensor v, Tensor proj, bool need_v_sign) "
      "-> (Tensor, Tensor, Tensor)",
      &dzsr::sw::forward_cuda);
  m.def("sliced_wasserstein_backward(Tensor sign, Tensor proj_scaled) -> Tensor",
        &dzsr::sw::backward_cuda);
}

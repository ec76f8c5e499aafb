// The CUDA patch-match kernel and its host code (csrc/patch_match/patch_match_cuda.cu), built for CPU
// threads with the execution-model stand-in of cuda_emulation.h and registered as
// torch.ops.dzsr_pm_cuda_emu.patch_match for the emulation tests. Adds the warp shuffle the kernel
// uses (__shfl_xor_sync) on top of cuda_emulation.h, in the same barrier-synchronised style.
#define DZSR_CUDA_EMULATION
#include "cuda_emulation.h"

template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  auto* sync = dzsr::deform::emulation::current;
  const int t = dzsr::deform::emulation::linear_thread();
  sync->lanes[t] = double(v);
  sync->warps[t / 32]->arrive_and_wait();
  const T r = T(sync->lanes[(t / 32) * 32 + ((t % 32) ^ lane_mask)]);
  sync->warps[t / 32]->arrive_and_wait();
  return r;
}

#include "patch_match/patch_match_cuda.cu"

TORCH_LIBRARY(dzsr_pm_cuda_emu, m) {
  m.def("patch_match(Tensor uq, Tensor ur, Tensor inv_q, Tensor inv_r, int patch_size) -> (Tensor, Tensor)",
        &patch_match_cuda);
}

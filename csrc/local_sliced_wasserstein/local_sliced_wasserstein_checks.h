// Argument checks of the local sliced-Wasserstein forward, shared by its CPU and CUDA kernels
// (the public API checks everything first, with messages naming the argument: these guard direct
// calls of torch.ops.dzsr_C.local_sliced_wasserstein_forward).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

namespace dzsr {
namespace losw {

inline void check_forward_arguments(const at::Tensor& u, const at::Tensor& v,
                                    const at::Tensor& proj, int64_t window, int64_t stride) {
  TORCH_CHECK(u.dim() == 4 && v.sizes() == u.sizes(), "u and v must be (N, C, H, W) of one shape");
  TORCH_CHECK(proj.dim() == 2 && proj.size(1) == u.size(1), "proj must be (C', C)");
  TORCH_CHECK(proj.scalar_type() == at::kFloat || proj.scalar_type() == at::kDouble,
              "proj must be float32 or float64 (the compute dtype)");
  TORCH_CHECK(window >= 1 && window <= std::min(u.size(2), u.size(3)) && stride >= 1,
              "window must be in [1, min(H, W)] and stride >= 1");
  TORCH_CHECK(u.size(2) * u.size(3) < (int64_t(1) << 31), "H*W must fit a 32-bit index");
}

}  // namespace losw
}  // namespace dzsr

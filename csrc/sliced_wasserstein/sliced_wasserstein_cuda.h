// Block-level CUDA pieces shared by the global and the local sliced-Wasserstein kernels
// (sliced_wasserstein_cuda.cu, local_sliced_wasserstein/local_sliced_wasserstein_cuda.cu): the
// block-wide float64 sum and the kernel that turns per-row (or per-chunk) partial sums into the
// loss in a fixed order, so both losses are deterministic. Included by .cu files only, after
// cuda_launch.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "cuda_launch.h"

namespace dzsr {
namespace sw {

constexpr int kWarp = 32;
constexpr int kFinishThreads = 256;  // threads of finish_loss_kernel

// Sum over the block of one double per thread (blockDim.x a multiple of 32), returned to thread 0
// (others get 0). Every thread must call it; it contains a barrier, so shared-memory writes made
// before it are visible to every thread after it. warp_sum: 32 doubles of shared memory.
__device__ __forceinline__ double block_sum(double x, double* warp_sum) {
  for (int d = kWarp / 2; d > 0; d >>= 1) x += __shfl_down_sync(0xffffffffu, x, d);
  if (threadIdx.x % kWarp == 0) warp_sum[threadIdx.x / kWarp] = x;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < int(blockDim.x) / kWarp; ++w) total += warp_sum[w];
  }
  return total;
}

// loss = (sum of partial[0, n)) / count in scalar_t, summed in a fixed order by one block of
// kFinishThreads threads; NaN when count is 0 (the mean of nothing).
template <typename scalar_t>
__global__ void __launch_bounds__(kFinishThreads)
    finish_loss_kernel(const double* __restrict__ partial, int64_t n, double count,
                       scalar_t* __restrict__ loss) {
  __shared__ double warp_sum[kWarp];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kFinishThreads) acc += partial[i];
  acc = block_sum(acc, warp_sum);
  if (threadIdx.x == 0) *loss = static_cast<scalar_t>(acc / count);
}

// Writes (sum of the float64 partial sums) / count into the 0-dim loss (scalar_t), on the device.
template <typename scalar_t>
void finish_loss(const at::Tensor& partial, double count, at::Tensor& loss) {
  launch(finish_loss_kernel<scalar_t>, dim3(1), dim3(kFinishThreads), partial.data_ptr<double>(),
         partial.numel(), count, loss.data_ptr<scalar_t>());
}

}  // namespace sw
}  // namespace dzsr

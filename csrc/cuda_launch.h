// The kernel launch shared by the CUDA files of csrc/ (.cu only): the CUDA headers and launch() on
// torch's current stream, or, in the test-only build (-DDZSR_CUDA_EMULATION,
// tests/cuda_emulation/), the CPU-thread stand-in of the execution model, so the same kernels and
// host code run with CPU tensors and can be checked against the references without a GPU.
#pragma once

#ifdef DZSR_CUDA_EMULATION
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace dzsr {

// Launch `kernel` on grid x block threads on the current stream and check the launch.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
#ifdef DZSR_CUDA_EMULATION
  dzsr::deform::emulation::launch(kernel, grid, block, args...);
#else
  kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

}  // namespace dzsr

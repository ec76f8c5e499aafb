// Test-only stand-in for the CUDA execution model, so csrc/deform_conv/deform_conv_cuda.cu
// (compiled with -DDZSR_CUDA_EMULATION) runs its kernels and host code on CPU threads with CPU
// tensors.
//
// Each block runs on its own set of std::threads (one per CUDA thread), blocks one after another,
// so a kernel's `__shared__` arrays become function-local statics shared by the block's threads.
// __syncthreads is a barrier over the block, __shfl_down_sync a barrier-synchronised exchange over
// the 32 lanes of a warp, atomicAdd a std::atomic_ref add. Enough for data races on shared memory,
// missing barriers' effects aside, index and reduction bugs to show up as wrong numbers.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define C10_CUDA_CHECK(expr) (void)(expr)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };

inline int cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = 4;  // a small device: the weight-gradient kernel then splits pixels into several chunks
  return 0;
}

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace c10::cuda

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace dzsr::deform::emulation {

struct BlockSync {
  std::barrier<> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<double> lanes;  // one exchange slot per thread
  explicit BlockSync(int threads) : block(threads), lanes(threads) {
    for (int w = 0; w < (threads + 31) / 32; ++w)
      warps.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
  }
};
inline BlockSync* current = nullptr;  // the block now running (blocks run one at a time)

inline int linear_thread() {
  return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  const int threads = int(block.x * block.y * block.z);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        BlockSync sync(threads);
        current = &sync;
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            gridDim = grid;
            blockDim = block;
            blockIdx = dim3(bx, by, bz);
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            kernel(args...);
            // A thread that returns early leaves the barriers, so the others do not wait for it.
            current->block.arrive_and_drop();
            current->warps[t / 32]->arrive_and_drop();
          });
        }
        for (auto& th : pool) th.join();
        current = nullptr;
      }
}

}  // namespace dzsr::deform::emulation

inline void __syncthreads() { dzsr::deform::emulation::current->block.arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned, T v, int delta) {
  auto* sync = dzsr::deform::emulation::current;
  const int t = dzsr::deform::emulation::linear_thread();
  const int lane = t % 32, warp = t / 32;
  const int width =
      int(sync->lanes.size()) - 32 * warp < 32 ? int(sync->lanes.size()) - 32 * warp : 32;
  sync->lanes[t] = double(v);
  sync->warps[warp]->arrive_and_wait();
  const T r = lane + delta < width ? T(sync->lanes[t + delta]) : v;
  sync->warps[warp]->arrive_and_wait();
  return r;
}

template <typename T>
T atomicAdd(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v);
}

using std::max;
using std::min;

// ---- Added for the on-chip sort of csrc/sliced_wasserstein/sliced_wasserstein_cuda.cu (its
// block-wide prefix scan): __shfl_up_sync, the mirror of __shfl_down_sync above. Lane i gets lane
// i - delta's value (its own below delta), exchanged through the same barrier-synchronised slots.
template <typename T>
T __shfl_up_sync(unsigned, T v, int delta) {
  auto* sync = dzsr::deform::emulation::current;
  const int t = dzsr::deform::emulation::linear_thread();
  const int lane = t % 32, warp = t / 32;
  sync->lanes[t] = double(v);
  sync->warps[warp]->arrive_and_wait();
  const T r = lane >= delta ? T(sync->lanes[t - delta]) : v;
  sync->warps[warp]->arrive_and_wait();
  return r;
}

// ---- Added for csrc/deform_conv/deform_conv_cuda.cu's channels-last backward: __shfl_xor_sync,
// the butterfly exchange over the 32 lanes of a full warp. Lane l gets lane l ^ mask's value,
// barrier-synchronised like __shfl_down_sync above (a lane outside the warp returns its own value).
template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  auto* sync = dzsr::deform::emulation::current;
  const int t = dzsr::deform::emulation::linear_thread();
  const int lane = t % 32, warp = t / 32;
  const int width =
      int(sync->lanes.size()) - 32 * warp < 32 ? int(sync->lanes.size()) - 32 * warp : 32;
  sync->lanes[t] = double(v);
  sync->warps[warp]->arrive_and_wait();
  const int src = lane ^ lane_mask;
  const T r = src < width ? T(sync->lanes[32 * warp + src]) : v;
  sync->warps[warp]->arrive_and_wait();
  return r;
}

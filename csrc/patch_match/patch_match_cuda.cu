// Top-1 patch matching on CUDA: one block owns kBlockQ query patches of one sample and streams over
// the reference patches in blocks of kBlockR with a running max/argmax (memory O(Nq + Nr)).
//
// Same inputs and formula as patch_match_cpu.cpp (see there): val(q, r) = <P_q, P_r> * inv_r[r],
// ties to the smallest r, score = best * inv_q[q]. The kBlockQ x kBlockR block of patch dot products
// is a sum of p² shifted pixel GEMMs over C, computed in exact float32 FMA (no TF32): for each shift
// and channel chunk the gathered pixel rows are staged in shared memory and every thread accumulates
// a 4x4 micro-tile. The block maximum of each query row is reduced across the 16 threads sharing the
// row with warp shuffles, comparing (value, then smaller index).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <tuple>

#ifdef DZSR_CUDA_EMULATION
// Test-only build (tests/cuda_emulation/patch_match_emulated.cpp): the same kernel and host code run
// on CPU threads with CPU tensors, so they can be checked against the reference without a GPU.
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "common.h"

namespace {

constexpr int kBlockQ = 64;
constexpr int kBlockR = 64;
constexpr int kChunk = 16;     // channels staged per step
constexpr int kThreads = 256;  // 16 x 16 threads, each a 4 x 4 micro-tile
constexpr int kMicro = 4;

#ifdef DZSR_CUDA_EMULATION
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CPU;
#else
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CUDA;
#endif

// Larger value first, then the smaller index. Indices are int (Nr < 2^31), INT_MAX meaning "none".
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__global__ void __launch_bounds__(kThreads) patch_match_kernel(
    const float* __restrict__ uq, const float* __restrict__ ur, const float* __restrict__ inv_q,
    const float* __restrict__ inv_r, float* __restrict__ score, int64_t* __restrict__ index, int p, int C, int Hq,
    int Wq, int Hr, int Wr, int wpq, int wpr, int nq, int nr) {
  __shared__ float qs[kChunk][kBlockQ + 1];
  __shared__ float rs[kChunk][kBlockR + 1];
  const int n = blockIdx.y;
  const int q0 = blockIdx.x * kBlockQ;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const float* uq_n = uq + static_cast<int64_t>(n) * Hq * Wq * C;
  const float* ur_n = ur + static_cast<int64_t>(n) * Hr * Wr * C;

  float best[kMicro];
  int best_idx[kMicro];
  for (int i = 0; i < kMicro; ++i) {
    best[i] = -INFINITY;
    best_idx[i] = 0;
  }

  for (int r0 = 0; r0 < nr; r0 += kBlockR) {
    float acc[kMicro][kMicro] = {};
    for (int d = 0; d < p * p; ++d) {
      const int dy = d / p, dx = d % p;
      for (int c0 = 0; c0 < C; c0 += kChunk) {
        // Stage kBlockQ (resp. kBlockR) gathered pixel rows x kChunk channels, channel-fastest reads.
        for (int e = tid; e < kBlockQ * kChunk; e += kThreads) {
          const int row = e / kChunk, ch = e % kChunk, q = q0 + row, c = c0 + ch;
          float v = 0.f;
          if (q < nq && c < C) v = uq_n[(static_cast<int64_t>(q / wpq + dy) * Wq + q % wpq + dx) * C + c];
          qs[ch][row] = v;
        }
        for (int e = tid; e < kBlockR * kChunk; e += kThreads) {
          const int row = e / kChunk, ch = e % kChunk, r = r0 + row, c = c0 + ch;
          float v = 0.f;
          if (r < nr && c < C) v = ur_n[(static_cast<int64_t>(r / wpr + dy) * Wr + r % wpr + dx) * C + c];
          rs[ch][row] = v;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
          float a[kMicro], b[kMicro];
#pragma unroll
          for (int i = 0; i < kMicro; ++i) a[i] = qs[k][ty * kMicro + i];
#pragma unroll
          for (int j = 0; j < kMicro; ++j) b[j] = rs[k][tx + 16 * j];
#pragma unroll
          for (int i = 0; i < kMicro; ++i)
#pragma unroll
            for (int j = 0; j < kMicro; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
      }
    }
    // Block maximum per query row: own 4 columns (increasing r), then the 16 threads of the row.
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      float bv = -INFINITY;
      int bi = INT_MAX;
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        const int r = r0 + tx + 16 * j;
        if (r < nr) {
          const float v = acc[i][j] * inv_r[static_cast<int64_t>(n) * nr + r];
          if (better(v, r, bv, bi)) {
            bv = v;
            bi = r;
          }
        }
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (better(ov, oi, bv, bi)) {
          bv = ov;
          bi = oi;
        }
      }
      if (bi != INT_MAX && bv > best[i]) {  // blocks arrive in increasing r: strict > keeps ties
        best[i] = bv;
        best_idx[i] = bi;
      }
    }
  }
  if (tx == 0) {
    for (int i = 0; i < kMicro; ++i) {
      const int q = q0 + ty * kMicro + i;
      if (q < nq) {
        const int64_t o = static_cast<int64_t>(n) * nq + q;
        score[o] = best[i] * inv_q[o];
        index[o] = best_idx[i];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> patch_match_cuda(const at::Tensor& uq, const at::Tensor& ur, const at::Tensor& inv_q,
                                                    const at::Tensor& inv_r, int64_t p) {
  TORCH_CHECK(uq.dim() == 4 && ur.dim() == 4 && uq.size(0) == ur.size(0) && uq.size(3) == ur.size(3),
              "patch_match: uq (N,Hq,Wq,C) and ur (N,Hr,Wr,C) must agree in N and C");
  for (const auto* t : {&uq, &ur, &inv_q, &inv_r})
    TORCH_CHECK(t->device().type() == kKernelDevice && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "patch_match: inputs must be contiguous float32 CUDA tensors");
  const int64_t N = uq.size(0), Hq = uq.size(1), Wq = uq.size(2), C = uq.size(3), Hr = ur.size(1), Wr = ur.size(2);
  const int64_t hpq = Hq - p + 1, wpq = Wq - p + 1, hpr = Hr - p + 1, wpr = Wr - p + 1;
  TORCH_CHECK(p >= 1 && hpq >= 1 && wpq >= 1 && hpr >= 1 && wpr >= 1, "patch_match: maps smaller than the patch");
  TORCH_CHECK(inv_q.sizes() == at::IntArrayRef({N, hpq, wpq}) && inv_r.sizes() == at::IntArrayRef({N, hpr, wpr}),
              "patch_match: inv_q/inv_r must be (N, H-p+1, W-p+1)");
  TORCH_CHECK(Hq * Wq * C < (int64_t{1} << 31) && Hr * Wr * C < (int64_t{1} << 31) && N < 65536,
              "patch_match: a sample's map must have fewer than 2^31 elements and N < 65536");
  const c10::cuda::CUDAGuard guard(uq.device());
  at::Tensor score = dzsr::new_output({N, hpq, wpq}, uq.options());
  at::Tensor index = dzsr::new_output({N, hpq, wpq}, uq.options().dtype(at::kLong));
  const int nq = static_cast<int>(hpq * wpq), nr = static_cast<int>(hpr * wpr);
  const dim3 grid((nq + kBlockQ - 1) / kBlockQ, static_cast<unsigned>(N));
  const auto args = std::make_tuple(
      uq.data_ptr<float>(), ur.data_ptr<float>(), inv_q.data_ptr<float>(), inv_r.data_ptr<float>(),
      score.data_ptr<float>(), index.data_ptr<int64_t>(), static_cast<int>(p), static_cast<int>(C),
      static_cast<int>(Hq), static_cast<int>(Wq), static_cast<int>(Hr), static_cast<int>(Wr), static_cast<int>(wpq),
      static_cast<int>(wpr), nq, nr);
#ifdef DZSR_CUDA_EMULATION
  std::apply([&](auto... a) { dzsr::deform::emulation::launch(patch_match_kernel, grid, dim3(kThreads), a...); }, args);
#else
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::apply([&](auto... a) { patch_match_kernel<<<grid, kThreads, 0, stream>>>(a...); }, args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  return {score, index};
}

}  // namespace

#ifndef DZSR_CUDA_EMULATION
TORCH_LIBRARY_IMPL(dzsr_C, CUDA, m) { m.impl("patch_match", &patch_match_cuda); }
#endif

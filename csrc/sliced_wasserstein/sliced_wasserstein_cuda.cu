// CUDA forward of the sliced-Wasserstein loss (torch.ops.dzsr_C.sliced_wasserstein_forward); the
// backward is the device-generic ATen GEMM registered in sliced_wasserstein_cpu.cpp.
//
// Projections: one batched GEMM per side (cuBLAS). Sorting: torch's segmented sort of the (N*C', L)
// rows (u with its permutation, v without unless v needs a gradient). Then one fused kernel per
// (row, chunk of the row): |a - b| reduced in shared memory to one partial per block, and
// sign(a - b) scattered to the element's unsorted position as int8 (sliced_wasserstein_math.h).
// The projected u rows are freed before v is projected, to bound the peak. Empty inputs (N, C' or
// L = 0) launch nothing: the loss is the mean of nothing, NaN, and the signs are empty.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#ifdef DZSR_CUDA_EMULATION
// Test-only build (tests/cuda_emulation/sliced_wasserstein_emulated.cpp): the same kernel and host
// code run on CPU threads with CPU tensors, so they can be checked against the reference without a
// GPU.
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "common.h"
#include "sliced_wasserstein/sliced_wasserstein_math.h"

namespace dzsr {
namespace sw {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 4096;  // elements of one row per block

template <typename scalar_t>
__global__ void sorted_compare_kernel(const scalar_t* __restrict__ su,
                                      const scalar_t* __restrict__ sv,
                                      const int64_t* __restrict__ iu,
                                      const int64_t* __restrict__ iv, int8_t* __restrict__ sign_u,
                                      int8_t* __restrict__ sign_v, scalar_t* __restrict__ partial,
                                      int64_t length, int nchunks) {
  using Key = RadixKey<scalar_t>;
  const int64_t row = blockIdx.x;
  const int chunk = blockIdx.y;
  const int64_t base = row * length;
  const int64_t end = min(length, int64_t(chunk + 1) * kChunk);
  scalar_t acc = 0;
  for (int64_t i = int64_t(chunk) * kChunk + threadIdx.x; i < end; i += kThreads) {
    const scalar_t a = su[base + i], b = sv[base + i];
    const scalar_t d = a - b;
    acc += d < scalar_t(0) ? -d : d;
    const int8_t g = Key::sign_of_difference(Key::encode(a), Key::encode(b));
    sign_u[base + iu[base + i]] = g;
    if (sign_v != nullptr) sign_v[base + iv[base + i]] = static_cast<int8_t>(-g);
  }
  __shared__ scalar_t red[kThreads];
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[row * nchunks + chunk] = red[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& u,
                                                            const at::Tensor& v,
                                                            const at::Tensor& proj,
                                                            bool need_v_sign) {
  TORCH_CHECK(u.dim() == 4 && v.sizes() == u.sizes(), "u and v must be (N, C, H, W) of one shape");
  TORCH_CHECK(proj.dim() == 2 && proj.size(1) == u.size(1), "proj must be (C', C)");
  TORCH_CHECK(proj.scalar_type() == at::kFloat || proj.scalar_type() == at::kDouble,
              "proj must be float32 or float64 (the compute dtype)");
  const c10::cuda::CUDAGuard guard(u.device());
  // The inputs may require grad; the op is not traced.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t n_batch = u.size(0), channels = u.size(1), length = u.size(2) * u.size(3);
  const int64_t num_proj = proj.size(0), rows = n_batch * num_proj;
  const auto dtype = proj.scalar_type();
  const auto opts = proj.options();
  const at::Tensor m = proj.contiguous();
  at::Tensor su, iu, sv, iv;
  std::tie(su, iu) = at::matmul(m, u.reshape({n_batch, channels, length}).to(dtype)).sort(2);
  {
    at::Tensor pv = at::matmul(m, v.reshape({n_batch, channels, length}).to(dtype));
    if (need_v_sign) {
      std::tie(sv, iv) = pv.sort(2);
    } else {
      sv = std::get<0>(pv.sort(2));
    }
  }
  at::Tensor sign_u = new_output({n_batch, num_proj, length}, opts.dtype(at::kChar));
  at::Tensor sign_v = need_v_sign ? new_output({n_batch, num_proj, length}, opts.dtype(at::kChar))
                                  : at::empty({0}, opts.dtype(at::kChar));
  const int nchunks = static_cast<int>((length + kChunk - 1) / kChunk);  // grid.y: L up to 2^28
  at::Tensor partial = at::empty({rows, nchunks}, opts);
  const dim3 grid(static_cast<unsigned>(rows), nchunks);
  if (rows > 0 && nchunks > 0) {  // a grid dimension of 0 is a launch error
    AT_DISPATCH_FLOATING_TYPES(dtype, "sliced_wasserstein_forward_cuda", [&] {
      const auto args =
          std::make_tuple(su.data_ptr<scalar_t>(), sv.data_ptr<scalar_t>(), iu.data_ptr<int64_t>(),
                          need_v_sign ? iv.data_ptr<int64_t>() : nullptr, sign_u.data_ptr<int8_t>(),
                          need_v_sign ? sign_v.data_ptr<int8_t>() : nullptr,
                          partial.data_ptr<scalar_t>(), length, nchunks);
#ifdef DZSR_CUDA_EMULATION
      std::apply(
          [&](auto... a) {
            dzsr::deform::emulation::launch(sorted_compare_kernel<scalar_t>, grid, dim3(kThreads),
                                            a...);
          },
          args);
#else
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
      std::apply(
          [&](auto... a) {
            sorted_compare_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(a...);
          },
          args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
    });
  }
  at::Tensor loss = (partial.sum(at::kDouble) / static_cast<double>(rows * length)).to(dtype);
  return {loss, sign_u, sign_v};
}

}  // namespace
}  // namespace sw
}  // namespace dzsr

#ifndef DZSR_CUDA_EMULATION
TORCH_LIBRARY_IMPL(dzsr_C, CUDA, m) {
  m.impl("sliced_wasserstein_forward", &dzsr::sw::forward_cuda);
}
#endif

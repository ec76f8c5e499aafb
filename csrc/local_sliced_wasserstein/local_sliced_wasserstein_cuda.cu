// Local sliced-Wasserstein (LOSW) loss: the CUDA forward
// (torch.ops.dzsr_C.local_sliced_wasserstein_forward on CUDA tensors;
// docs/design.md#local-sliced-wasserstein). Outputs and semantics as the CPU kernel's
// (local_sliced_wasserstein_cpu.cpp, op docstring of local_sliced_wasserstein/op.py): the loss, and
// per pixel and direction the int32 sum of its signs over the windows holding it; the backward is
// the global loss's GEMM (sliced_wasserstein_backward, CUDA kernel in sliced_wasserstein_cuda.cu).
//
// Projection: P_u = M u_n, P_v = M v_n by one batched GEMM per side (cuBLAS; float32 stays IEEE
// float32 unless the caller opts into TF32), each pixel projected once, no unfold buffer.
//
// Windows: one block per (sample n, direction j) row pair of H x W projected values. The block
// walks down the map in steps of `step_rows` rows of windows; a step's windows cover a band of
// band_rows = (step_rows - 1) s + k map rows, which the block holds in shared memory as
// order-preserving keys (sliced_wasserstein_math.h: NaN last, -0.0 as +0.0) for u and v, with
// the band's int32 sign sums beside them. The band is a ring of band_rows map rows (map row r at
// ring row r % band_rows): a step loads only the rows the previous one did not hold, and a row
// leaves the ring only once every window holding it is done, when its sums are written out.
//
// Sort: every (window, slot) pair of the step takes one thread, in passes of at most kPairs
// pairs. A thread ranks its pixel within its window, once for u and once for v, by comparing its
// key with the window's k*k keys read from shared memory (ties broken by the position in the
// window's row-major order, so the ranks are exactly a stable sort's, as on the CPU), and writes
// its ring position at the window's sorted slot. Then each (window, slot) pair compares the u and
// v keys sorted there: |a - b| is summed in float64 per thread, sign(a - b) added to the sums of
// both pixels by shared-memory atomics (integers: the result does not depend on their order).
// Ranking costs k^2 comparisons per pixel and window, 64 at the authors' k = 8 (k^4 per window):
// cheaper than a sort network at their window sizes and exact for any order.
//
// Loss: each block's float64 sum goes to row_sum[row], finish_loss_kernel adds them in a fixed
// order and divides by N C' P k^2: the loss is deterministic, and so are the sums.
//
// Limits (checked here and, before dispatch, by local_sliced_wasserstein/cpp_kernel.py, which
// sends larger windows to the reference): k * W <= kBand<scalar_t> map pixels per band (2048
// float32, 1024 float64), so a window's k * k slots fit one pass. Empty inputs (N = 0 or C' = 0)
// launch no window kernel: the loss is the mean of nothing, NaN, and the sums are empty.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "common.h"
#include "cuda_launch.h"
#include "local_sliced_wasserstein/local_sliced_wasserstein_checks.h"
#include "sliced_wasserstein/sliced_wasserstein_cuda.h"
#include "sliced_wasserstein/sliced_wasserstein_math.h"

namespace dzsr {
namespace losw {
namespace {

using sw::RadixKey;

constexpr int kThreads = 256;  // threads per (sample, direction) block
constexpr int kPairs = 2048;   // (window, slot) pairs per pass

// Map pixels a band may hold per compute dtype: the block's static shared memory (keys and sums
// for u and v, the sorted ring positions of a pass) stays within 48 KB: 40.3 KB for float32,
// 32.3 KB for float64.
template <typename scalar_t>
constexpr int kBand = sizeof(scalar_t) == 4 ? 2048 : 1024;

// A window's k * k <= k * W <= kBand slots fit one pass.
static_assert(kBand<float> <= kPairs && kBand<double> <= kPairs, "a window must fit one pass");

template <typename scalar_t>
struct BandShared {
  using Bits = typename RadixKey<scalar_t>::Bits;
  Bits key_u[kBand<scalar_t>], key_v[kBand<scalar_t>];     // ring of band rows, W keys each
  int32_t sum_u[kBand<scalar_t>], sum_v[kBand<scalar_t>];  // their sign sums so far
  uint16_t sorted_u[kPairs], sorted_v[kPairs];             // ring position at each sorted slot
  double warp_sum[sw::kWarp];
};

// The window layout of the map and how the kernel walks it (host-computed).
struct Geometry {
  int height, width, window, stride;
  int rows, cols;  // windows along H and W
  int step_rows;   // rows of windows per step
  int band_rows;   // map rows of the ring: (step_rows - 1) * stride + window
};

// Ring position of map row r, column c.
__device__ __forceinline__ int ring_at(const Geometry& g, int r, int c) {
  return (r % g.band_rows) * g.width + c;
}

// Rank of the element at position e (row-major) of the k x k window whose top-left pixel is at
// ring row `top`, column `left`, among that window's keys: the number of keys below its key, plus
// the number of equal keys before it (a stable sort's slot).
template <typename Bits>
__device__ __forceinline__ int stable_rank(const Bits* key, const Geometry& g, int top, int left,
                                           int e, Bits mine) {
  int rank = 0;
  int j = 0;
  for (int dy = 0; dy < g.window; ++dy) {
    const Bits* row = key + ring_at(g, top + dy, left);
    for (int dx = 0; dx < g.window; ++dx, ++j) {
      const Bits other = row[dx];
      rank += (other < mine) | ((other == mine) & (j < e));
    }
  }
  return rank;
}

// One block per (sample, direction) row pair: pu, pv (rows, H*W) projected values; sum_u, sum_v
// (rows, H*W) int32 sign sums (sum_v written only when kWithV); row_sum[row] the row's sum of
// |a - b| over every window and slot.
template <typename scalar_t, bool kWithV>
__global__ void __launch_bounds__(kThreads)
    window_compare_kernel(const scalar_t* __restrict__ pu, const scalar_t* __restrict__ pv,
                          int32_t* __restrict__ sum_u, int32_t* __restrict__ sum_v,
                          double* __restrict__ row_sum, Geometry g) {
  using Key = RadixKey<scalar_t>;
  using Bits = typename Key::Bits;
  __shared__ BandShared<scalar_t> s;
  const int64_t length = int64_t(g.height) * g.width;
  const int64_t base = int64_t(blockIdx.x) * length;
  const int kk = g.window * g.window;
  const int per_pass = kPairs / kk * kk;  // whole windows per pass, so a window never straddles two
  double acc = 0.0;
  int loaded = 0;  // map rows [0, loaded) have been in the ring
  for (int wy0 = 0; wy0 < g.rows; wy0 += g.step_rows) {
    const int step = min(g.step_rows, g.rows - wy0);
    const int top = wy0 * g.stride, bottom = top + (step - 1) * g.stride + g.window;
    // The rows of this step's band the ring does not hold yet: keys in, sums zeroed.
    const int first = max(top, loaded);
    for (int i = threadIdx.x; i < (bottom - first) * g.width; i += blockDim.x) {
      const int r = first + i / g.width, c = i % g.width;
      const int at = ring_at(g, r, c);
      s.key_u[at] = Key::encode(pu[base + int64_t(r) * g.width + c]);
      s.key_v[at] = Key::encode(pv[base + int64_t(r) * g.width + c]);
      s.sum_u[at] = 0;
      s.sum_v[at] = 0;
    }
    loaded = bottom;
    __syncthreads();
    const int pairs = step * g.cols * kk;
    for (int p0 = 0; p0 < pairs; p0 += per_pass) {
      const int count = min(per_pass, pairs - p0);
      for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const int w = (p0 + i) / kk, e = (p0 + i) % kk;
        const int wtop = top + (w / g.cols) * g.stride, left = (w % g.cols) * g.stride;
        const int at = ring_at(g, wtop + e / g.window, left + e % g.window);
        const int first_slot = i - e;  // the window's slot 0 in this pass
        s.sorted_u[first_slot + stable_rank(s.key_u, g, wtop, left, e, s.key_u[at])] = at;
        s.sorted_v[first_slot + stable_rank(s.key_v, g, wtop, left, e, s.key_v[at])] = at;
      }
      __syncthreads();
      for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const int at_u = s.sorted_u[i], at_v = s.sorted_v[i];
        const Bits ka = s.key_u[at_u], kb = s.key_v[at_v];
        const double d = static_cast<double>(Key::decode(ka) - Key::decode(kb));
        acc += d < 0.0 ? -d : d;
        const int sign = Key::sign_of_difference(ka, kb);
        if (sign != 0) {
          atomicAdd(&s.sum_u[at_u], sign);
          if (kWithV) atomicAdd(&s.sum_v[at_v], -sign);
        }
      }
      __syncthreads();
    }
    // Map rows no later window holds are final: [top, next top), or to the bottom of the map after
    // the last step. Rows the windows skip (below the band) have no windows: zero.
    const int done = wy0 + step < g.rows ? (wy0 + step) * g.stride : g.height;
    for (int i = threadIdx.x; i < (done - top) * g.width; i += blockDim.x) {
      const int r = top + i / g.width, c = i % g.width;
      const bool held = r < bottom;
      const int64_t out = base + int64_t(r) * g.width + c;
      sum_u[out] = held ? s.sum_u[ring_at(g, r, c)] : 0;
      if (kWithV) sum_v[out] = held ? s.sum_v[ring_at(g, r, c)] : 0;
    }
    __syncthreads();
  }
  acc = sw::block_sum(acc, s.warp_sum);
  if (threadIdx.x == 0) row_sum[blockIdx.x] = acc;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& u,
                                                            const at::Tensor& v,
                                                            const at::Tensor& proj, int64_t window,
                                                            int64_t stride, bool need_v_count) {
  check_forward_arguments(u, v, proj, window, stride);
  const c10::cuda::CUDAGuard guard(u.device());
  // The inputs may require grad; the op is not traced.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t n_batch = u.size(0), channels = u.size(1), length = u.size(2) * u.size(3);
  const int64_t num_proj = proj.size(0), rows = n_batch * num_proj;
  const auto dtype = proj.scalar_type();
  const int64_t band = dtype == at::kFloat ? kBand<float> : kBand<double>;
  TORCH_CHECK(window * u.size(3) <= band, "the CUDA kernel holds window * W <= ", band,
              " pixels of ", dtype, " in a band; got window ", window, " and W ", u.size(3));
  Geometry g{};
  g.height = static_cast<int>(u.size(2));
  g.width = static_cast<int>(u.size(3));
  g.window = static_cast<int>(window);
  // A stride beyond the map leaves one window per axis whatever its value: clamped to fit an int.
  g.stride = static_cast<int>(std::min<int64_t>(stride, std::max(g.height, g.width)));
  g.rows = (g.height - g.window) / g.stride + 1;
  g.cols = (g.width - g.window) / g.stride + 1;
  const int band_rows = static_cast<int>(band / g.width);
  g.step_rows = std::min(g.rows, (band_rows - g.window) / g.stride + 1);
  g.band_rows = (g.step_rows - 1) * g.stride + g.window;
  const auto count_opts = proj.options().dtype(at::kInt);
  at::Tensor sum_u = new_output({n_batch, num_proj, length}, count_opts);
  at::Tensor sum_v = need_v_count ? new_output({n_batch, num_proj, length}, count_opts)
                                  : at::empty({0}, count_opts);
  at::Tensor loss = new_output({}, proj.options());
  at::Tensor row_sum = at::empty({rows}, proj.options().dtype(at::kDouble));
  const at::Tensor m = proj.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "local_sliced_wasserstein_forward_cuda", [&] {
    if (rows > 0) {  // a grid of no blocks is not a valid launch
      const at::Tensor pu =
          at::matmul(m, u.reshape({n_batch, channels, length}).to(dtype)).contiguous();
      const at::Tensor pv =
          at::matmul(m, v.reshape({n_batch, channels, length}).to(dtype)).contiguous();
      const dim3 grid(static_cast<unsigned>(rows)), block(kThreads);
      if (need_v_count) {
        launch(window_compare_kernel<scalar_t, true>, grid, block, pu.data_ptr<scalar_t>(),
               pv.data_ptr<scalar_t>(), sum_u.data_ptr<int32_t>(), sum_v.data_ptr<int32_t>(),
               row_sum.data_ptr<double>(), g);
      } else {
        launch(window_compare_kernel<scalar_t, false>, grid, block, pu.data_ptr<scalar_t>(),
               pv.data_ptr<scalar_t>(), sum_u.data_ptr<int32_t>(), static_cast<int32_t*>(nullptr),
               row_sum.data_ptr<double>(), g);
      }
    }
    const double pairs = static_cast<double>(rows) * g.rows * g.cols * g.window * g.window;
    sw::finish_loss<scalar_t>(row_sum, pairs, loss);
  });
  return {loss, sum_u, sum_v};
}

}  // namespace
}  // namespace losw
}  // namespace dzsr

#ifndef DZSR_CUDA_EMULATION
TORCH_LIBRARY_IMPL(dzsr_C, CUDA, m) {
  m.impl("local_sliced_wasserstein_forward", &dzsr::losw::forward_cuda);
}
#endif
